// The PostgreSQL JDBC driver (what DBeaver and Metabase use) against Hoistway's PostgreSQL
// endpoint: getTables, getColumns, a prepared query. Run as a single source file:
// java -cp postgresql.jar Catalog.java PORT USER PASSWORD. Prints one line per fact; the Rust
// test (sql_clients/mod.rs) compares them with the server's own wire descriptions.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Timestamp;
import java.time.Instant;
import java.util.Properties;

public class Catalog {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/hoistway";
        try (Connection conn = DriverManager.getConnection(url, props)) {
            DatabaseMetaData meta = conn.getMetaData();
            System.out.println("product\t" + meta.getDatabaseProductName() + "\t"
                    + meta.getDatabaseMajorVersion());
            try (ResultSet rs = meta.getTables(null, "public", "%", new String[] {"TABLE", "VIEW"})) {
                while (rs.next()) {
                    System.out.println("table\t" + rs.getString("TABLE_NAME") + "\t"
                            + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = meta.getColumns(null, "public", "%", "%")) {
                while (rs.next()) {
                    System.out.println("column\t" + rs.getString("TABLE_NAME") + "\t"
                            + rs.getString("COLUMN_NAME") + "\t" + rs.getString("TYPE_NAME") + "\t"
                            + rs.getInt("ORDINAL_POSITION"));
                }
            }
            String sql = "SELECT lift_id, count(*) AS n, max(ts) AS last FROM readings "
                    + "WHERE ts >= ? AND lift_id <> ? GROUP BY lift_id ORDER BY lift_id";
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setTimestamp(1, Timestamp.from(Instant.parse("2026-01-10T10:30:00Z")));
                ps.setString(2, "L-A2");
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        System.out.println("row\t" + rs.getString(1) + "\t" + rs.getLong(2) + "\t"
                                + rs.getTimestamp(3).toInstant());
                    }
                }
            }
        }
    }
}
