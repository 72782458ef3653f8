import { useEffect, useState } from "preact/hooks";
import { ApiError, FieldProblem, Me, Rule, call, fleetStaff } from "../api";
import { Failure } from "../components";
import { SeverityBadge } from "../format";

/** A starting point for each kind of condition (docs/alerts.md has every field). */
const TEMPLATES: Record<Kind, Record<string, unknown>> = {
  counter_crossing: { counter: "trips_total", at: 1000000, every: 1000000 },
  threshold: { metric: "motor_temp_c", above: 90, for_readings: 3, clear_at: 85, clear_after_secs: 60 },
  event: { events: ["entrapment"], clear_on: ["entrapment_cleared"] },
  fault: { codes: ["E42"] },
  absence: { after_secs: 600 },
  rate: { counter: "door_cycles_total", factor: 3, min_count: 50, weeks: 4 },
};

function describe(w: Rule["when"]): string {
  const { kind, ...params } = w;
  return `${kind.replace("_", " ")}: ${Object.entries(params)
    .map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(", ") : v}`)
    .join(" · ")}`;
}

function blank(): Rule {
  return { id: "", name: "", severity: "warning", scope: {}, enabled: true, hold_secs: 0, when: { kind: "threshold", metric: "motor_temp_c", above: 90, for_readings: 3, clear_at: 85, clear_after_secs: 60 } };
}

type Kind = Rule["when"]["kind"];

/** Add or edit one rule; the server's validation shows beside each field it names. */
function Editor({ rule, isNew, onDone }: { rule: Rule; isNew: boolean; onDone: () => void }) {
  const [r, setR] = useState<Rule>(rule);
  const { kind, ...params } = rule.when;
  const [condKind, setCondKind] = useState(kind);
  const [condText, setCondText] = useState(JSON.stringify(params, null, 2));
  const [problems, setProblems] = useState<FieldProblem[]>([]);
  const [error, setError] = useState<unknown>(null);
  const at = (field: string) => problems.filter((p) => p.field === field || p.field.startsWith(`${field}.`));
  const note = (field: string) => {
    const here = at(field);
    return here.length ? (
      <span class="error" id={`err-${field}`}>
        {here.map((p) => p.message).join("; ")}
      </span>
    ) : null;
  };
  const shown = ["id", "name", "description", "severity", "hold_secs", "scope", "when"];
  const other = problems.filter((p) => !shown.some((f) => p.field === f || p.field.startsWith(`${f}.`)));

  const save = async (e: Event) => {
    e.preventDefault();
    setProblems([]);
    setError(null);
    let when: Record<string, unknown>;
    try {
      when = { kind: condKind, ...JSON.parse(condText) };
    } catch (err) {
      setProblems([{ field: "when", message: `not JSON: ${(err as Error).message}` }]);
      return;
    }
    const scope = Object.fromEntries(Object.entries(r.scope ?? {}).filter(([, v]) => v && String(v).trim()));
    const body = { ...r, scope, when, description: r.description || undefined };
    try {
      await call("put", "/v1/alert-rules/{id}", { path: { id: r.id.trim() }, body: body as Rule });
      onDone();
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) setProblems(err.errors);
      else setError(err);
    }
  };
  const text = (field: "id" | "name" | "description", label: string, disabled = false) => (
    <label>
      {label}
      <input name={field} disabled={disabled} value={r[field] ?? ""} aria-invalid={at(field).length > 0} aria-describedby={`err-${field}`} onInput={(e) => setR({ ...r, [field]: e.currentTarget.value })} />
      {note(field)}
    </label>
  );
  return (
    <form class="stack editor" onSubmit={save} aria-label={isNew ? "New rule" : `Edit rule ${rule.id}`}>
      {text("id", "Id (lower case, digits, - and _)", !isNew)}
      {text("name", "Name")}
      {text("description", "Description (optional)")}
      <div class="row">
        <label>
          Severity
          <select name="severity" value={r.severity} onChange={(e) => setR({ ...r, severity: e.currentTarget.value as Rule["severity"] })}>
            {["info", "warning", "major", "critical"].map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Hold (s)
          <input name="hold_secs" type="number" min={0} value={r.hold_secs} onInput={(e) => setR({ ...r, hold_secs: Number(e.currentTarget.value) })} />
          {note("hold_secs")}
        </label>
        <label class="check">
          <input type="checkbox" name="enabled" checked={r.enabled} onChange={(e) => setR({ ...r, enabled: e.currentTarget.checked })} /> Enabled
        </label>
      </div>
      <fieldset>
        <legend>Scope (blank: every lift)</legend>
        <div class="row">
          {(["customer", "building", "model", "lift"] as const).map((f) => (
            <label>
              {f[0].toUpperCase() + f.slice(1)}
              <input name={`scope.${f}`} value={r.scope?.[f] ?? ""} onInput={(e) => setR({ ...r, scope: { ...r.scope, [f]: e.currentTarget.value } })} />
            </label>
          ))}
        </div>
        {note("scope")}
      </fieldset>
      <label>
        Condition
        <select
          name="kind"
          value={condKind}
          onChange={(e) => {
            const k = e.currentTarget.value as Kind;
            setCondKind(k);
            setCondText(JSON.stringify(TEMPLATES[k], null, 2));
          }}
        >
          {Object.keys(TEMPLATES).map((k) => (
            <option value={k}>{k.replace("_", " ")}</option>
          ))}
        </select>
      </label>
      <label>
        Its parameters (JSON; docs/alerts.md lists them)
        <textarea name="when" rows={6} spellcheck={false} value={condText} aria-invalid={at("when").length > 0} aria-describedby="err-when" onInput={(e) => setCondText(e.currentTarget.value)} />
        {note("when")}
      </label>
      {other.map((p) => (
        <p class="error">
          {p.field}: {p.message}
        </p>
      ))}
      <Failure error={error} />
      <div class="row">
        <button type="submit">Save rule</button>
        <button type="button" class="danger" onClick={onDone}>
          Cancel
        </button>
      </div>
    </form>
  );
}

export function Rules({ me }: { me: Me }) {
  const [rules, setRules] = useState<Rule[] | null>(null);
  const [editing, setEditing] = useState<{ rule: Rule; isNew: boolean } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const admin = fleetStaff(me, "admin");
  const load = () => call("get", "/v1/alert-rules").then((r) => setRules(r.items), setError);
  useEffect(() => {
    load();
  }, []);
  const remove = (id: string) => {
    if (!confirm(`Delete rule ${id}? Its open alerts stay until resolved.`)) return;
    call("delete", "/v1/alert-rules/{id}", { path: { id } }).then(load, setError);
  };
  return (
    <section>
      <h1>Alert rules</h1>
      {admin && !editing && (
        <button type="button" onClick={() => setEditing({ rule: blank(), isNew: true })}>
          New rule
        </button>
      )}
      {editing && (
        <Editor
          rule={editing.rule}
          isNew={editing.isNew}
          onDone={() => {
            setEditing(null);
            load();
          }}
        />
      )}
      <Failure error={error} />
      {rules && (
        <div class="table-wrap">
          <table aria-label="Alert rules">
            <thead>
              <tr>
                <th scope="col">Rule</th>
                <th scope="col">Severity</th>
                <th scope="col">Condition</th>
                <th scope="col">Scope</th>
                <th scope="col">Enabled</th>
                {admin && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {rules.map((r) => (
                <tr key={r.id}>
                  <td title={r.description}>
                    <strong>{r.name}</strong>
                    <div class="muted">{r.id}</div>
                  </td>
                  <td>
                    <SeverityBadge severity={r.severity} />
                  </td>
                  <td class="wrap">{describe(r.when)}</td>
                  <td>
                    {Object.entries(r.scope ?? {})
                      .map(([k, v]) => `${k} ${v}`)
                      .join(", ") || "every lift"}
                  </td>
                  <td>{r.enabled ? "yes" : "no"}</td>
                  {admin && (
                    <td>
                      <div class="row">
                        <button type="button" onClick={() => setEditing({ rule: r, isNew: false })} aria-label={`Edit ${r.id}`}>
                          Edit
                        </button>
                        <button type="button" class="danger" onClick={() => remove(r.id)} aria-label={`Delete ${r.id}`}>
                          Delete
                        </button>
                      </div>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
