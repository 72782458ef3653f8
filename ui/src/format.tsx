// Times in the viewer's zone, with UTC on hover; numbers as people read them.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function Time({ at }: { at: string | null | undefined }) {
  if (!at) return <span class="muted">—</span>;
  const d = new Date(at);
  return (
    <time dateTime={d.toISOString()} title={`${d.toISOString().replace(".000Z", "Z")} (UTC)`}>
      {dateTime.format(d)}
    </time>
  );
}

export function ago(at: string | null | undefined, now = Date.now()): string {
  if (!at) return "never";
  const s = Math.max(0, Math.round((now - new Date(at).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const integer = new Intl.NumberFormat();
export const n = (v: number | null | undefined) => (v === null || v === undefined ? "—" : integer.format(v));
export const fixed = (v: number | null | undefined, digits = 1, unit = "") =>
  v === null || v === undefined ? "—" : `${v.toFixed(digits)}${unit ? ` ${unit}` : ""}`;

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge status-${status}`}>{status.replace("_", " ")}</span>;
}

export function SeverityBadge({ severity }: { severity: string }) {
  return <span class={`badge severity-${severity}`}>{severity}</span>;
}
