"""The Python clients analysts use, against Hoistway's PostgreSQL endpoint.

Usage: clients.py PORT USER PASSWORD. Prints one JSON object: what each client saw. The Rust
test (sql_clients/mod.rs) compares it with what the server's own wire descriptions say.
"""

import asyncio
import datetime
import json
import sys
import time

import asyncpg
import pandas
import psycopg
import sqlalchemy
from sqlalchemy.dialects import postgresql

port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
since = datetime.datetime(2026, 1, 10, 10, 30, tzinfo=datetime.timezone.utc)

# psycopg 3: parameters of each type, text and binary results, timestamps with zones.
QUERY = (
    "SELECT lift_id, ts, seq, floor, motor_temp_c, faults FROM readings "
    "WHERE lift_id = %s AND ts >= %s AND seq >= %s AND motor_temp_c > %s AND %s "
    "ORDER BY ts"
)
with psycopg.connect(
    host="127.0.0.1", port=port, user=user, password=password, dbname="hoistway"
) as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute(QUERY, ("L-A1", since, 2, 40.5, True))
            rows = cur.fetchall()
            out[f"psycopg_binary_{binary}"] = {
                "types": [d.type_code for d in cur.description],
                "rows": [
                    [r[0], r[1].isoformat(), r[2], r[3], float(r[4]), list(r[5])]
                    for r in rows
                ],
                "tz": [str(r[1].tzinfo) for r in rows][:1],
            }
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), version()")
        out["psycopg_settings"] = list(cur.fetchone())
        cur.execute("SHOW TimeZone")
        out["psycopg_show"] = cur.fetchone()[0]


# asyncpg: binary protocol throughout, typed parameters.
async def with_asyncpg():
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user=user, password=password, database="hoistway"
    )
    try:
        rows = await conn.fetch(
            QUERY.replace("%s", "${}").format(1, 2, 3, 4, 5), "L-A1", since, 2, 40.5, True
        )
        return [
            [r["lift_id"], r["ts"].isoformat(), r["seq"], r["floor"], r["motor_temp_c"], list(r["faults"])]
            for r in rows
        ]
    finally:
        await conn.close()


out["asyncpg"] = asyncio.run(with_asyncpg())

# SQLAlchemy 2 (psycopg 3 driver): connect, inspect, reflect, pandas.
url = f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port}/hoistway"
started = time.perf_counter()
engine = sqlalchemy.create_engine(url)
inspector = sqlalchemy.inspect(engine)
tables = inspector.get_table_names()
out["sqlalchemy_connect_and_list_ms"] = (time.perf_counter() - started) * 1000
out["sqlalchemy_tables"] = sorted(tables)
out["sqlalchemy_views"] = sorted(inspector.get_view_names())
dialect = postgresql.dialect()
out["sqlalchemy_columns"] = {
    t: [[c["name"], c["type"].compile(dialect=dialect).lower()] for c in inspector.get_columns(t)]
    for t in sorted(tables + inspector.get_view_names())
}
metadata = sqlalchemy.MetaData()
readings = sqlalchemy.Table("readings", metadata, autoload_with=engine)
with engine.connect() as conn:
    stmt = (
        sqlalchemy.select(readings.c.lift_id, sqlalchemy.func.count().label("n"))
        .where(readings.c.ts >= since)
        .group_by(readings.c.lift_id)
        .order_by(readings.c.lift_id)
    )
    out["sqlalchemy_reflected"] = [list(r) for r in conn.execute(stmt)]
frame = pandas.read_sql(
    sqlalchemy.text(
        "SELECT lift_id, ts, motor_temp_c FROM readings WHERE lift_id = :lift ORDER BY ts"
    ),
    engine,
    params={"lift": "L-B1"},
)
out["pandas"] = {
    "rows": len(frame),
    "dtypes": {k: str(v) for k, v in frame.dtypes.items()},
    "first": frame["ts"].iloc[0].isoformat(),
}
engine.dispose()
print(json.dumps(out))
