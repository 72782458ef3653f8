import { useEffect, useState } from "preact/hooks";
import { Alert, AlertEvent, AlertPage, Me, call, can, enc } from "../api";
import { Failure, Link, TextFilter } from "../components";
import { SeverityBadge, Time } from "../format";
import { setParam, useLocation } from "../router";

function Detail({ id, me, onChange }: { id: number; me: Me; onChange: () => void }) {
  const [d, setD] = useState<{ alert: Alert; events: AlertEvent[] } | null>(null);
  const [note, setNote] = useState("");
  const [error, setError] = useState<unknown>(null);
  const load = () => call("get", "/v1/alerts/{id}", { path: { id } }).then(setD, setError);
  useEffect(() => {
    load();
  }, [id]);
  const act = (what: "acknowledge" | "resolve") => (e: Event) => {
    e.preventDefault();
    setError(null);
    call("post", what === "acknowledge" ? "/v1/alerts/{id}/acknowledge" : "/v1/alerts/{id}/resolve", { path: { id }, body: { note } }).then(() => {
      setNote("");
      load();
      onChange();
    }, setError);
  };
  if (!d) return <Failure error={error} />;
  const a = d.alert;
  return (
    <div class="detail" aria-label={`Alert ${a.id}`} role="region">
      <p>{a.summary}</p>
      <h3>History</h3>
      <ol class="timeline">
        {d.events.map((ev) => (
          <li>
            <Time at={ev.at} /> <strong>{ev.kind}</strong> by {ev.by}
            {ev.note ? ` — ${ev.note}` : ""}
          </li>
        ))}
      </ol>
      {can(me, "operator") && a.state !== "resolved" && (
        <form class="stack" onSubmit={act(a.state === "firing" ? "acknowledge" : "resolve")}>
          <label>
            Note {a.state === "firing" ? "(optional for acknowledging, required to resolve)" : "(required to resolve)"}
            <input name="note" value={note} onInput={(e) => setNote(e.currentTarget.value)} />
          </label>
          <div class="row">
            {a.state === "firing" && (
              <button type="button" onClick={act("acknowledge")}>
                Acknowledge
              </button>
            )}
            <button type="button" onClick={act("resolve")} disabled={!note.trim()}>
              Resolve
            </button>
          </div>
        </form>
      )}
      <Failure error={error} />
    </div>
  );
}

/** The inbox: filtered, paged by time, updated live from the alert stream. */
export function Alerts({ me }: { me: Me }) {
  const { params } = useLocation();
  const state = params.get("state") ?? "open";
  const severity = params.get("severity") ?? "";
  const lift = params.get("lift") ?? "";
  const before = params.get("before") ?? "";
  const open = Number(params.get("open") ?? 0);
  const [page, setPage] = useState<AlertPage | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);

  useEffect(() => {
    call("get", "/v1/alerts", { query: { state: state === "all" ? undefined : state, severity: severity || undefined, lift: lift || undefined, before: before ? Number(before) : undefined, limit: 50 } }).then(
      (p) => (setPage(p), setError(null)),
      setError,
    );
  }, [state, severity, lift, before, tick]);

  useEffect(() => {
    const es = new EventSource("/v1/alerts/stream");
    const bump = () => setTick((t) => t + 1);
    for (const step of ["fired", "refired", "reopened", "acknowledged", "resolved", "escalated"]) es.addEventListener(`alert.${step}`, bump);
    es.addEventListener("lagged", bump);
    return () => es.close();
  }, []);

  return (
    <section>
      <h1>Alerts</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          State
          <select name="state" value={state} onChange={(e) => setParam({ state: e.currentTarget.value, before: undefined })}>
            <option value="open">open</option>
            <option value="firing">firing</option>
            <option value="acknowledged">acknowledged</option>
            <option value="resolved">resolved</option>
            <option value="all">all</option>
          </select>
        </label>
        <label>
          Severity
          <select name="severity" value={severity} onChange={(e) => setParam({ severity: e.currentTarget.value, before: undefined })}>
            <option value="">any</option>
            <option value="critical">critical</option>
            <option value="major">major</option>
            <option value="warning">warning</option>
            <option value="info">info</option>
          </select>
        </label>
        <TextFilter label="Lift" name="lift" value={lift} onCommit={(v) => setParam({ lift: v, before: undefined })} />
      </form>
      <Failure error={error} />
      {page && page.items.length === 0 && <p class="muted">No alerts match.</p>}
      {page && page.items.length > 0 && (
        <ul class="inbox" aria-label="Alerts">
          {page.items.map((a) => (
            <li key={a.id} class={`alert state-${a.state}`}>
              <button
                type="button"
                class="summary"
                aria-expanded={open === a.id}
                onClick={() => setParam({ open: open === a.id ? undefined : String(a.id) })}
              >
                <SeverityBadge severity={a.severity} /> <strong>{a.rule_name}</strong> <span class="muted">#{a.id}</span>
                <span class="state">{a.state}</span>
                {a.refires > 0 && <span class="muted"> · fired {a.refires + 1}×</span>}
              </button>
              <div class="meta">
                {a.lift_id ? <Link href={`/lifts/${enc(a.lift_id)}`}>{a.lift_id}</Link> : "fleet"}
                {a.building && (
                  <>
                    {" · "}
                    <Link href={`/buildings/${enc(a.building)}`}>{a.building}</Link>
                  </>
                )}
                {" · "}
                <Time at={a.fired_at} />
              </div>
              {open === a.id && <Detail id={a.id} me={me} onChange={() => setTick((t) => t + 1)} />}
            </li>
          ))}
        </ul>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={!before} onClick={() => setParam({ before: undefined })}>
          Newest
        </button>
        <button type="button" disabled={!page?.next_before} onClick={() => setParam({ before: page?.next_before?.toString() })}>
          Older
        </button>
      </nav>
    </section>
  );
}
