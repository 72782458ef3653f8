import { useEffect, useState } from "preact/hooks";
import { Me, Schemas, call, enc, fleetStaff } from "../api";
import { Failure, Link } from "../components";
import { Time, n } from "../format";

type DlqFile = Schemas["DlqFile"];

type DeadLetter = Schemas["DeadLetter"];

const bytes = (b: number) => (b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(1)} GiB` : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`);

/** Readings the processor could not apply: inspect a file, replay it once the cause is fixed. */
export function DeadLetters({ me }: { me: Me }) {
  const [files, setFiles] = useState<DlqFile[] | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const [letters, setLetters] = useState<DeadLetter[] | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const load = () => call("get", "/v1/dlq").then((r) => setFiles(r.files), setError);
  useEffect(() => {
    load();
  }, []);
  useEffect(() => {
    setLetters(null);
    if (open) call("get", "/v1/dlq/{id}", { path: { id: open } }).then((r) => setLetters(r.items), setError);
  }, [open]);
  const replay = (id: string) => {
    setError(null);
    call("post", "/v1/dlq/{id}/replay", { path: { id } }).then((r) => {
      setDone(`${n(r.replayed)} readings of ${id} are back in the log.`);
      setOpen(null);
      load();
    }, setError);
  };
  return (
    <section>
      <h1>Dead letters</h1>
      <p class="muted">Readings that were accepted but could not be applied (docs/api.md). Nothing here is lost: replay a file after fixing the cause, for example after registering the lift.</p>
      {done && (
        <p class="ok" role="status">
          {done}
        </p>
      )}
      <Failure error={error} />
      {files && files.length === 0 && <p class="muted">No dead letters.</p>}
      {files && files.length > 0 && (
        <div class="table-wrap">
          <table aria-label="Dead-letter files">
            <thead>
              <tr>
                <th scope="col">File</th>
                <th scope="col">Readings</th>
                <th scope="col">Reasons</th>
                <th scope="col">Size</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {files.map((f) => (
                <tr key={f.id}>
                  <td>
                    <code>{f.id}</code>
                  </td>
                  <td class="num">{n(f.items)}</td>
                  <td>
                    {Object.entries(f.reasons)
                      .map(([r, c]) => `${r.replace(/_/g, " ")} ${c}`)
                      .join(", ")}
                  </td>
                  <td>{f.bytes ? bytes(f.bytes) : "—"}</td>
                  <td>
                    <div class="row">
                      <button type="button" aria-expanded={open === f.id} onClick={() => setOpen(open === f.id ? null : f.id)}>
                        {open === f.id ? "Hide" : "Inspect"}
                      </button>
                      {fleetStaff(me, "operator") && (
                        <button type="button" onClick={() => replay(f.id)}>
                          Replay
                        </button>
                      )}
                    </div>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {open && letters && (
        <>
          <h2>File {open}</h2>
          <div class="table-wrap">
            <table aria-label={`Dead letters of ${open}`}>
              <thead>
                <tr>
                  <th scope="col">Lift</th>
                  <th scope="col">Seq</th>
                  <th scope="col">Time</th>
                  <th scope="col">Reason</th>
                  <th scope="col">Detail</th>
                </tr>
              </thead>
              <tbody>
                {letters.slice(0, 500).map((l) => (
                  <tr>
                    <td>
                      <Link href={`/lifts/${enc(l.reading.lift_id)}`}>{l.reading.lift_id}</Link>
                    </td>
                    <td class="num">{l.reading.seq}</td>
                    <td>
                      <Time at={new Date(l.reading.ts_us / 1000).toISOString()} />
                    </td>
                    <td>{l.reason.replace(/_/g, " ")}</td>
                    <td class="wrap">{l.detail}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {letters.length > 500 && <p class="muted">The first 500 of {n(letters.length)} shown.</p>}
        </>
      )}
    </section>
  );
}

/** Rows, bytes and files per tier; upkeep on demand (fleet admins). */
export function Storage({ me }: { me: Me }) {
  const [status, setStatus] = useState<Schemas["StoreStatus"] | null>(null);
  const [report, setReport] = useState<Record<string, number> | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const load = () => call("get", "/v1/storage/status").then(setStatus, setError);
  useEffect(() => {
    load();
  }, []);
  const maintain = () => {
    setBusy(true);
    setError(null);
    call("post", "/v1/storage/maintain")
      .then((r) => (setReport(r), load()), setError)
      .finally(() => setBusy(false));
  };
  return (
    <section>
      <h1>Storage</h1>
      <Failure error={error} />
      {status && (
        <>
          <p>
            {n(status.buffered_rows)} readings buffered in memory (already durable in the log), waiting for the next flush.
          </p>
          <p data-testid="move-backlog">
            {status.move_backlog.files === 0
              ? "Nothing waiting to move to the archive."
              : `${n(status.move_backlog.files)} files (${n(status.move_backlog.readings)} readings) older than the hot retention are waiting to move to the archive; if this stays, the archive is failing (see the server log).`}
          </p>
          <div class="table-wrap">
            <table aria-label="Storage tiers">
              <thead>
                <tr>
                  <th scope="col">Tier</th>
                  <th scope="col">Kind</th>
                  <th scope="col">Rows</th>
                  <th scope="col">Size</th>
                  <th scope="col">Files</th>
                  <th scope="col">Dates</th>
                  <th scope="col">Oldest</th>
                  <th scope="col">Newest</th>
                </tr>
              </thead>
              <tbody>
                {status.tiers.map((t) => (
                  <tr>
                    <td>{t.tier}</td>
                    <td>{t.kind.replace(/_/g, " ")}</td>
                    <td class="num">{n(t.rows)}</td>
                    <td class="num">{bytes(t.bytes)}</td>
                    <td class="num">{n(t.files)}</td>
                    <td class="num">{n(t.dates)}</td>
                    <td>{t.oldest ?? "—"}</td>
                    <td>{t.newest ?? "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      {fleetStaff(me, "admin") && (
        <p>
          <button type="button" disabled={busy} onClick={maintain}>
            {busy ? "Running upkeep…" : "Run upkeep now"}
          </button>{" "}
          <span class="muted">compaction, moves to the archive, retention</span>
        </p>
      )}
      {report && (
        <p role="status" class="ok">
          {Object.entries(report)
            .map(([k, v]) => `${k.replace(/_/g, " ")} ${n(v)}`)
            .join(" · ")}
        </p>
      )}
    </section>
  );
}
