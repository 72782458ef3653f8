import { useEffect, useMemo, useState } from "preact/hooks";
import { Alert, LiftInfo, LiftView, Me, QueryAnswer, Schemas, call, enc, fleetStaff } from "../api";
import { Chart, Series } from "../Chart";
import { Failure, Link } from "../components";
import { SeverityBadge, StatusBadge, Time, ago, fixed, n } from "../format";

/** Each range reads what has about as many points as a chart has pixels. */
const RANGES = [
  { id: "1h", label: "1 h", secs: 3600, step: "raw", bucket: "reading" },
  { id: "24h", label: "24 h", secs: 86400, step: "2m", bucket: "2 min" },
  { id: "7d", label: "7 d", secs: 7 * 86400, step: "15m", bucket: "15 min" },
  { id: "30d", label: "30 d", secs: 30 * 86400, step: "1h", bucket: "hour" },
  { id: "1y", label: "1 y", secs: 365 * 86400, step: "1d", bucket: "day" },
] as const;
type RangeId = (typeof RANGES)[number]["id"];

const TIME_COLUMNS = ["ts", "time", "hour", "day"];

/** The latest state, pushed by the server (server-sent events) while the page is open. */
function useLiveState(id: string): [LiftView | null, unknown, boolean] {
  const [state, setState] = useState<LiftView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [live, setLive] = useState(false);
  useEffect(() => {
    setState(null);
    call("get", "/v1/lifts/{lift_id}/state", { path: { lift_id: id } }).then(setState, setError);
    const es = new EventSource(`/v1/lifts/${enc(id)}/state/stream`);
    es.addEventListener("state", (e) => {
      setState(JSON.parse((e as MessageEvent).data));
      setLive(true);
    });
    es.onerror = () => setLive(false);
    return () => es.close();
  }, [id]);
  return [state, error, live];
}

function Charts({ id }: { id: string }) {
  const [range, setRange] = useState<RangeId>("24h");
  const [data, setData] = useState<QueryAnswer | null>(null);
  const [window, setWindow] = useState<[number, number]>([0, 0]);
  const [error, setError] = useState<unknown>(null);
  const r = RANGES.find((x) => x.id === range)!;
  useEffect(() => {
    setData(null);
    setError(null);
    const to = new Date();
    const from = new Date(to.getTime() - r.secs * 1000);
    setWindow([from.getTime() / 1000, to.getTime() / 1000]);
    call("get", "/v1/lifts/{lift_id}/readings", { path: { lift_id: id }, query: { from: from.toISOString(), to: to.toISOString(), step: r.step || undefined } }).then(setData, setError);
  }, [id, range]);

  const charts = useMemo(() => {
    if (!data) return null;
    const tcol = data.columns.map((c) => c.name).find((c) => TIME_COLUMNS.includes(c)) ?? "ts";
    const x = data.rows.map((row) => new Date(String(row[tcol])).getTime() / 1000);
    const col = (name: string) => data.rows.map((row) => (row[name] === null || row[name] === undefined ? null : Number(row[name])));
    const has = (name: string) => data.columns.some((c) => c.name === name);
    const metric = (name: string, color: string): Series[] =>
      has(name)
        ? [{ label: name, values: col(name), color }]
        : [
            { label: "average", values: col(`${name}_avg`), color },
            { label: "maximum", values: col(`${name}_max`), color: "#c0392b" },
          ].filter((s) => has(s.label === "average" ? `${name}_avg` : `${name}_max`));
    return [
      { title: "Motor temperature", unit: "°C", series: metric("motor_temp_c", "#1f77b4") },
      { title: "Vibration", unit: "mm/s", series: metric("vibration_mm_s", "#9467bd") },
      { title: "Load", unit: "kg", series: metric("load_kg", "#2ca02c") },
      { title: "Speed", unit: "m/s", series: metric("speed_mps", "#ff7f0e") },
      { title: `Trips per ${r.bucket}`, unit: "trips", series: has("trips") ? [{ label: "trips", values: col("trips"), color: "#17becf", bars: true }] : [] },
    ]
      .filter((c) => c.series.length > 0)
      .map((c) => ({ ...c, x }));
  }, [data]);

  return (
    <section aria-labelledby="charts-heading">
      <h2 id="charts-heading">History</h2>
      <div class="segmented" role="group" aria-label="Time range">
        {RANGES.map((x) => (
          <button type="button" aria-pressed={x.id === range} onClick={() => setRange(x.id)}>
            {x.label}
          </button>
        ))}
      </div>
      <Failure error={error} />
      {!data && !error && <p class="muted">Loading…</p>}
      {data && (
        <p class="muted" data-testid="chart-source">
          {data.row_count} points ({r.step === "raw" ? "raw readings" : `one per ${r.bucket}`}) in {data.elapsed_ms} ms
          {data.truncated ? " (truncated)" : ""}
        </p>
      )}
      <div class="charts">{charts?.map((c) => <Chart title={c.title} unit={c.unit} x={c.x} series={c.series} range={window} />)}</div>
    </section>
  );
}

function Timeline({ id }: { id: string }) {
  const [rows, setRows] = useState<Record<string, unknown>[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const lift = id.replace(/'/g, "''");
    const sql = `SELECT ts, events, faults FROM readings WHERE lift_id = '${lift}' AND ts > now() - INTERVAL '7 days' AND (cardinality(events) > 0 OR cardinality(faults) > 0) ORDER BY ts DESC LIMIT 50`;
    call("post", "/v1/sql", { body: { sql } }).then((a) => setRows(a.rows), setError);
  }, [id]);
  return (
    <section aria-labelledby="timeline-heading">
      <h2 id="timeline-heading">Events and faults (7 days)</h2>
      <Failure error={error} />
      {rows && rows.length === 0 && <p class="muted">None.</p>}
      {rows && rows.length > 0 && (
        <ol class="timeline">
          {rows.map((r) => (
            <li>
              <Time at={String(r.ts)} />{" "}
              {((r.events as string[]) ?? []).map((e) => (
                <span class="badge">{e}</span>
              ))}
              {((r.faults as string[]) ?? []).map((f) => (
                <span class="badge severity-warning">{f}</span>
              ))}
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function LiftAlerts({ id }: { id: string }) {
  const [alerts, setAlerts] = useState<Alert[] | null>(null);
  useEffect(() => {
    call("get", "/v1/alerts", { query: { lift: id, limit: 20 } }).then((p) => setAlerts(p.items), () => setAlerts([]));
  }, [id]);
  return (
    <section aria-labelledby="lift-alerts-heading">
      <h2 id="lift-alerts-heading">Alerts</h2>
      {alerts && alerts.length === 0 && <p class="muted">No alerts.</p>}
      {alerts && alerts.length > 0 && (
        <ul class="plain">
          {alerts.map((a) => (
            <li>
              <SeverityBadge severity={a.severity} /> <Link href={`/alerts?lift=${enc(id)}&open=${a.id}`}>{a.rule_name}</Link> · {a.state} · <Time at={a.fired_at} />
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

type Credentials = Schemas["DeviceCredentials"];

function LiftCredentials({ id }: { id: string }) {
  const [c, setC] = useState<Credentials | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    call("get", "/v1/devices/{lift_id}", { path: { lift_id: id } }).then(setC, setError);
  }, [id]);
  const revoke = () => {
    if (!confirm(`Revoke the credentials of ${id}? It gets no new tokens until approved again.`)) return;
    call("post", "/v1/devices/{lift_id}/revoke", { path: { lift_id: id } }).then(() => call("get", "/v1/devices/{lift_id}", { path: { lift_id: id } }).then(setC), setError);
  };
  return (
    <section aria-labelledby="credentials-heading">
      <h2 id="credentials-heading">Credentials</h2>
      <Failure error={error} />
      {c && (
        <>
          <dl class="facts">
            <dt>Status</dt>
            <dd>{c.revoked_at ? "revoked" : c.approved_at ? "approved" : "never approved"}</dd>
            <dt>Approved</dt>
            <dd>
              <Time at={c.approved_at} /> {c.approved_by ? `by ${c.approved_by}` : ""}
            </dd>
            {c.revoked_at && (
              <>
                <dt>Revoked</dt>
                <dd>
                  <Time at={c.revoked_at} />
                </dd>
              </>
            )}
          </dl>
          {!c.revoked_at && c.approved_at && (
            <button type="button" class="danger" onClick={revoke}>
              Revoke credentials
            </button>
          )}
        </>
      )}
    </section>
  );
}

export function Lift({ id, me }: { id: string; me: Me }) {
  const [s, error, live] = useLiveState(id);
  const [info, setInfo] = useState<LiftInfo | null>(null);
  useEffect(() => {
    call("get", "/v1/lifts/{lift_id}", { path: { lift_id: id } }).then(setInfo, () => setInfo(null));
  }, [id]);
  if (error && !s)
    return (
      <section>
        <h1>Lift {id}</h1>
        <Failure error={error} />
      </section>
    );
  return (
    <section>
      <h1>
        Lift {id} {s && <StatusBadge status={s.status} />}
        <span class={`live ${live ? "on" : ""}`} title="server-sent events">
          {live ? "live" : "connecting"}
        </span>
      </h1>
      {s && (
        <div class="cards" role="group" aria-label="Latest state">
          <div class="card">
            <div class="value" data-testid="floor">
              {s.floor ?? "—"}
            </div>
            <div class="label">floor · {s.direction ?? "—"}</div>
          </div>
          <div class="card">
            <div class="value">{s.door ?? "—"}</div>
            <div class="label">door</div>
          </div>
          <div class="card">
            <div class="value">{fixed(s.load_kg, 0, "kg")}</div>
            <div class="label">load</div>
          </div>
          <div class="card">
            <div class="value">{fixed(s.motor_temp_c, 1, "°C")}</div>
            <div class="label">motor</div>
          </div>
          <div class="card">
            <div class="value" data-testid="trips">
              {n(s.trips_total)}
            </div>
            <div class="label">trips in all</div>
          </div>
          <div class="card">
            <div class="value" data-testid="readings">
              {n(s.readings_total)}
            </div>
            <div class="label">readings · last {ago(s.last_received_at)}</div>
          </div>
        </div>
      )}
      {s && (s.entrapped || s.faults.length > 0) && (
        <p class="error" role="status">
          {s.entrapped ? "Passenger trapped. " : ""}
          {s.faults.length ? `Active faults: ${s.faults.join(", ")}` : ""}
        </p>
      )}
      <Charts id={id} />
      <div class="columns">
        <LiftAlerts id={id} />
        <Timeline id={id} />
      </div>
      <div class="columns">
        <section aria-labelledby="registry-heading">
          <h2 id="registry-heading">Registry</h2>
          {info ? (
            <dl class="facts">
              <dt>Building</dt>
              <dd>{info.building ? <Link href={`/buildings/${enc(info.building)}`}>{info.building}</Link> : "—"}</dd>
              <dt>Site</dt>
              <dd>{info.site || "—"}</dd>
              <dt>Customer</dt>
              <dd>{info.customer || "—"}</dd>
              <dt>Model</dt>
              <dd>{info.model || "—"}</dd>
              <dt>Installed</dt>
              <dd>{info.install_date ?? "—"}</dd>
              <dt>Trips before Hoistway</dt>
              <dd>{n(info.initial_trips)}</dd>
            </dl>
          ) : (
            <p class="muted">Not registered.</p>
          )}
        </section>
        {fleetStaff(me, "operator") && <LiftCredentials id={id} />}
      </div>
    </section>
  );
}
