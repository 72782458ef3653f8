"""Arrow Flight SQL clients against Hoistway: ADBC's Flight SQL driver and pyarrow.flight.

Usage: flight.py PORT USER PASSWORD. Prints one JSON object: what each client saw.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
uri = f"grpc://127.0.0.1:{port}"
out = {}
EXPORT = "SELECT lift_id, ts, motor_temp_c, vibration_mm_s FROM readings ORDER BY lift_id, ts"

# ADBC (what Python notebooks, DuckDB and Polars use): a query, an export, the catalog.
with flightsql.connect(uri, db_kwargs={"username": user, "password": password}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT lift_id, count(*) AS n FROM readings GROUP BY lift_id ORDER BY lift_id")
        table = cur.fetch_arrow_table()
        out["adbc_rows"] = table.to_pylist()
        cur.execute(EXPORT)
        export = cur.fetch_arrow_table()
        out["adbc_export"] = {
            "rows": export.num_rows,
            "schema": [[f.name, str(f.type)] for f in export.schema],
            "first": export.slice(0, 1).to_pylist()[0]["lift_id"],
        }
        # Parameters: ADBC prepares the statement and binds the values (JDBC's `?` or `$1`).
        cur.execute(
            "SELECT count(*) AS n FROM readings WHERE lift_id = ? AND motor_temp_c > ?",
            parameters=("L-A1", -100.0),
        )
        out["adbc_bound"] = cur.fetchall()
        cur.execute("SELECT lift_id FROM readings WHERE lift_id = $1 LIMIT 1", parameters=("L-B1",))
        out["adbc_bound_dollar"] = cur.fetchall()
        cur.execute("SELECT lift_id FROM readings WHERE lift_id = $1 LIMIT 1", parameters=("L-A2",))
        out["adbc_bound_again"] = cur.fetchall()
        out["adbc_parameter_schema"] = [
            [f.name, str(f.type)]
            for f in cur.adbc_prepare("SELECT ts FROM readings WHERE lift_id = ? AND ts >= ?")
        ]
        try:
            cur.execute("DELETE FROM readings")
            out["delete"] = "ran"
        except flightsql.Error as e:
            out["delete"] = str(e)
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    out["adbc_tables"] = sorted(
        t["table_name"]
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for t in schema["db_schema_tables"] or []
    )


def field(number, payload):
    """A length-delimited protobuf field."""
    out = bytearray()
    for value in ((number << 3) | 2, len(payload)):
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out) + payload


# pyarrow.flight: basic auth handshake, then GetFlightInfo + DoGet with a Flight SQL command.
client = flight.FlightClient(uri)
header = client.authenticate_basic_token(user, password)
options = flight.FlightCallOptions(headers=[header])
command = field(
    1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
) + field(2, field(1, EXPORT.encode()))
info = client.get_flight_info(flight.FlightDescriptor.for_command(command), options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
out["pyarrow_export"] = {"rows": table.num_rows, "schema": [f.name for f in info.schema]}
try:
    flight.FlightClient(uri).authenticate_basic_token(user, "hwt_wrong")
    out["wrong_password"] = "accepted"
except flight.FlightUnauthenticatedError as e:
    out["wrong_password"] = "refused"
print(json.dumps(out, default=str))
