import { useMemo, useState } from "preact/hooks";
import { QueryAnswer, call, request } from "../api";
import { Chart } from "../Chart";
import { Failure } from "../components";

const EXAMPLE = "SELECT lift_id, sum(trips) AS trips\nFROM rollups_hourly\nWHERE hour > now() - INTERVAL '1 day'\nGROUP BY lift_id\nORDER BY trips DESC\nLIMIT 20";
const SHOWN = 500;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
const NUMERIC = /^(Int|UInt|Float|Decimal)/;

/** A line chart when the first column is a time and others are numbers. */
function ResultChart({ a }: { a: QueryAnswer }) {
  const chart = useMemo(() => {
    const [first, ...rest] = a.columns;
    if (!first || !first.type.startsWith("Timestamp") || a.rows.length < 2) return null;
    const numeric = rest.filter((c) => NUMERIC.test(c.type)).slice(0, COLORS.length);
    if (numeric.length === 0) return null;
    const rows = [...a.rows].sort((p, q) => String(p[first.name]).localeCompare(String(q[first.name])));
    return {
      x: rows.map((r) => new Date(String(r[first.name])).getTime() / 1000),
      series: numeric.map((c, i) => ({ label: c.name, color: COLORS[i], values: rows.map((r) => (r[c.name] === null ? null : Number(r[c.name]))) })),
    };
  }, [a]);
  return chart ? <Chart title="Result" unit="" x={chart.x} series={chart.series} /> : null;
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

export function Sql() {
  const [sql, setSql] = useState(EXAMPLE);
  const [answer, setAnswer] = useState<QueryAnswer | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const run = async (e?: Event) => {
    e?.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setAnswer(await call("post", "/v1/sql", { body: { sql } }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const download = async (format: "csv" | "parquet") => {
    setError(null);
    try {
      const resp = await request("POST", "/v1/sql", { sql, format }, format === "csv" ? "text/csv" : "application/vnd.apache.parquet");
      const url = URL.createObjectURL(await resp.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = `hoistway-query.${format}`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      setError(err);
    }
  };

  return (
    <section>
      <h1>SQL</h1>
      <p class="muted">
        One read-only query over <code>readings</code>, <code>rollups_hourly</code>, <code>rollups_daily</code>, <code>lifts</code>, <code>lift_state</code>, <code>alerts</code> and{" "}
        <code>alert_events</code> (docs/storage.md). Ctrl+Enter runs it.
      </p>
      <form class="stack" onSubmit={run}>
        <label>
          Query
          <textarea
            name="sql"
            rows={8}
            spellcheck={false}
            value={sql}
            onInput={(e) => setSql(e.currentTarget.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(e);
            }}
          />
        </label>
        <div class="row">
          <button type="submit" disabled={busy}>
            {busy ? "Running…" : "Run"}
          </button>
          <button type="button" onClick={() => download("csv")}>
            Download CSV
          </button>
          <button type="button" onClick={() => download("parquet")}>
            Download Parquet
          </button>
        </div>
      </form>
      <Failure error={error} />
      {answer && (
        <>
          <p class="muted" role="status">
            {answer.row_count} rows in {answer.elapsed_ms} ms{answer.truncated ? " (truncated by the server's row limit)" : ""}
            {answer.rows.length > SHOWN ? `; the first ${SHOWN} shown` : ""}
          </p>
          <ResultChart a={answer} />
          <div class="table-wrap">
            <table aria-label="Query result">
              <thead>
                <tr>
                  {answer.columns.map((c) => (
                    <th scope="col" title={c.type}>
                      {c.name}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {answer.rows.slice(0, SHOWN).map((r) => (
                  <tr>
                    {answer.columns.map((c) => (
                      <td>{cell(r[c.name])}</td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
    </section>
  );
}
