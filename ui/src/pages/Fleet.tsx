import { useEffect, useRef, useState } from "preact/hooks";
import { FleetSummary, LiftPage, LiftStatus, Me, Schemas, call } from "../api";
import { Failure, Link, TextFilter } from "../components";
import { StatusBadge, ago, n } from "../format";
import { setParam, useLocation } from "../router";

const PAGE = 50;

type AlertCounts = Schemas["OpenCounts"]["open"];

/** Counts and the readings rate, polled; the rate is the change of the readings counted. */
function Summary() {
  const [s, setS] = useState<FleetSummary | null>(null);
  const [alerts, setAlerts] = useState<AlertCounts | null>(null);
  const [rate, setRate] = useState<number | null>(null);
  const [error, setError] = useState<unknown>(null);
  const last = useRef<{ at: number; total: number } | null>(null);
  useEffect(() => {
    let stop = false;
    const poll = async () => {
      try {
        const [sum, open] = await Promise.all([
          call("get", "/v1/fleet/summary"),
          call("get", "/v1/alerts/counts").then((c) => c.open, () => null),
        ]);
        if (stop) return;
        const now = performance.now();
        if (last.current && now > last.current.at)
          setRate(Math.max(0, ((sum.readings_total - last.current.total) * 1000) / (now - last.current.at)));
        last.current = { at: now, total: sum.readings_total };
        setS(sum);
        setAlerts(open);
        setError(null);
      } catch (e) {
        if (!stop) setError(e);
      }
    };
    poll();
    const t = setInterval(poll, 3000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, []);
  if (!s) return <Failure error={error} />;
  const card = (label: string, value: string, cls = "", href?: string, testId?: string) => (
    <div class={`card ${cls}`}>
      <div class="value" data-testid={testId}>
        {href ? <Link href={href}>{value}</Link> : value}
      </div>
      <div class="label">{label}</div>
    </div>
  );
  return (
    <>
      <div class="cards" aria-label="Fleet status" role="group">
        {card("lifts", n(s.lifts))}
        {card("reporting", n(s.reporting), "ok", "/?status=reporting")}
        {card("silent", n(s.silent), s.silent ? "warn" : "", "/?status=silent")}
        {card("faulted", n(s.faulted), s.faulted ? "bad" : "", "/?status=faulted")}
        {card("never reported", n(s.never_reported), "", "/?status=never_reported")}
        {card("entrapped", n(s.entrapped), s.entrapped ? "bad" : "")}
        {card("readings/s", rate === null ? "…" : n(Math.round(rate)), "", undefined, "rate")}
      </div>
      {alerts && (
        <div class="cards" aria-label="Open alerts" role="group">
          {card("critical alerts open", n(alerts.critical), alerts.critical ? "bad" : "", "/alerts?state=open&severity=critical")}
          {card("major alerts open", n(alerts.major), alerts.major ? "bad" : "", "/alerts?state=open&severity=major")}
          {card("warnings open", n(alerts.warning), alerts.warning ? "warn" : "", "/alerts?state=open&severity=warning")}
          {card("info open", n(alerts.info), "", "/alerts?state=open&severity=info")}
        </div>
      )}
      <Failure error={error} />
    </>
  );
}

export function Fleet({ me }: { me: Me }) {
  const { params } = useLocation();
  const filters = {
    q: params.get("q") ?? "",
    customer: params.get("customer") ?? "",
    building: params.get("building") ?? "",
    model: params.get("model") ?? "",
    status: params.get("status") ?? "",
  };
  const after = params.get("after") ?? "";
  const [page, setPage] = useState<LiftPage | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [cursors, setCursors] = useState<string[]>([]);
  const key = JSON.stringify(filters) + after;

  useEffect(() => {
    let stop = false;
    const load = () =>
      call("get", "/v1/lifts", {
        query: {
          q: filters.q || undefined,
          customer: filters.customer || undefined,
          building: filters.building || undefined,
          model: filters.model || undefined,
          status: (filters.status || undefined) as LiftStatus | undefined,
          after: after || undefined,
          limit: PAGE,
        },
      }).then(
        (p) => !stop && (setPage(p), setError(null)),
        (e) => !stop && setError(e),
      );
    load();
    const t = setInterval(load, 5000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [key]);

  const filter = (name: string, value: string) => {
    setCursors([]);
    setParam({ [name]: value, after: undefined });
  };

  return (
    <section>
      <h1>Fleet</h1>
      <Summary />
      <h2 id="lifts-heading">Lifts</h2>
      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <TextFilter label="Search" name="q" type="search" placeholder="lift or building id" value={filters.q} onCommit={(v) => filter("q", v)} />
        {!me.customer && <TextFilter label="Customer" name="customer" value={filters.customer} onCommit={(v) => filter("customer", v)} />}
        <TextFilter label="Building" name="building" value={filters.building} onCommit={(v) => filter("building", v)} />
        <TextFilter label="Model" name="model" value={filters.model} onCommit={(v) => filter("model", v)} />
        <label>
          Status
          <select name="status" value={filters.status} onChange={(e) => filter("status", e.currentTarget.value)}>
            <option value="">any</option>
            <option value="reporting">reporting</option>
            <option value="faulted">faulted</option>
            <option value="silent">silent</option>
            <option value="never_reported">never reported</option>
          </select>
        </label>
      </form>
      <Failure error={error} />
      {page && (
        <>
          <div class="table-wrap">
            <table aria-labelledby="lifts-heading">
              <thead>
                <tr>
                  <th scope="col">Lift</th>
                  <th scope="col">Status</th>
                  <th scope="col">Building</th>
                  {!me.customer && <th scope="col">Customer</th>}
                  <th scope="col">Model</th>
                  <th scope="col">Floor</th>
                  <th scope="col">Trips</th>
                  <th scope="col">Last reading</th>
                </tr>
              </thead>
              <tbody>
                {page.items.map((l) => (
                  <tr key={l.lift_id}>
                    <td>
                      <Link href={`/lifts/${encodeURIComponent(l.lift_id)}`}>{l.lift_id}</Link>
                    </td>
                    <td>
                      <StatusBadge status={l.status} />
                      {l.entrapped && <span class="badge severity-critical">entrapment</span>}
                    </td>
                    <td>{l.building ? <Link href={`/buildings/${encodeURIComponent(l.building)}`}>{l.building}</Link> : "—"}</td>
                    {!me.customer && <td>{l.customer || "—"}</td>}
                    <td>{l.model || "—"}</td>
                    <td>{l.floor ?? "—"}</td>
                    <td class="num">{n(l.trips_total)}</td>
                    <td title={l.last_received_at ?? ""}>{ago(l.last_received_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {page.items.length === 0 && <p class="muted">No lift matches.</p>}
          <nav class="pager" aria-label="Pages">
            <button
              type="button"
              disabled={!after}
              onClick={() => {
                const prev = cursors.slice(0, -1);
                setCursors(prev);
                setParam({ after: cursors[cursors.length - 1] || undefined });
              }}
            >
              Previous
            </button>
            <button
              type="button"
              disabled={!page.next_after}
              onClick={() => {
                setCursors([...cursors, after]);
                setParam({ after: page.next_after ?? undefined });
              }}
            >
              Next
            </button>
          </nav>
        </>
      )}
    </section>
  );
}
