import { useEffect, useState } from "preact/hooks";
import { LiftView, call, enc } from "../api";
import { Failure, Link } from "../components";
import { StatusBadge, ago, fixed } from "../format";

const ARROW = { up: "▲", down: "▼", idle: "■" } as const;

/** Every lift of a building, refreshed every two seconds. */
export function Building({ id }: { id: string }) {
  const [lifts, setLifts] = useState<LiftView[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let stop = false;
    const load = () =>
      call("get", "/v1/buildings/{building_id}", { path: { building_id: id } }).then(
        (b) => !stop && (setLifts(b.lifts), setError(null)),
        (e) => !stop && setError(e),
      );
    load();
    const t = setInterval(load, 2000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [id]);
  return (
    <section>
      <h1>Building {id}</h1>
      <Failure error={error} />
      {lifts && (
        <ul class="shafts" aria-label={`Lifts of building ${id}`}>
          {lifts.map((l) => (
            <li class={`shaft status-${l.status}`} key={l.lift_id}>
              <h2>
                <Link href={`/lifts/${enc(l.lift_id)}`}>{l.lift_id}</Link>
              </h2>
              <div class="floor" aria-label="floor">
                {l.floor ?? "—"}
                <span class="dir" aria-label={`direction ${l.direction ?? "unknown"}`}>
                  {l.direction ? ARROW[l.direction] : ""}
                </span>
              </div>
              <dl>
                <dt>Status</dt>
                <dd>
                  <StatusBadge status={l.status} />
                  {l.entrapped && <span class="badge severity-critical">entrapment</span>}
                </dd>
                <dt>Door</dt>
                <dd>{l.door ?? "—"}</dd>
                <dt>Load</dt>
                <dd>{fixed(l.load_kg, 0, "kg")}</dd>
                <dt>Faults</dt>
                <dd>{l.faults.length ? l.faults.join(", ") : "none"}</dd>
                <dt>Last reading</dt>
                <dd>{ago(l.last_received_at)}</dd>
              </dl>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
