import { useEffect, useState } from "preact/hooks";
import { Me, Role, Schemas, call } from "../api";
import { Failure, TextFilter } from "../components";
import { Time } from "../format";
import { setParam, useLocation } from "../router";

type UserRow = Schemas["UserView"];

/** Accounts the signed-in admin manages (a customer's admin: that customer's). */
export function Users({ me }: { me: Me }) {
  const [users, setUsers] = useState<UserRow[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState<string | null>(null);
  const [form, setForm] = useState({ username: "", password: "", role: "viewer" as Role, customer: "" });
  const load = () => call("get", "/v1/users").then((r) => setUsers(r.items), setError);
  useEffect(() => {
    load();
  }, []);
  const act = (what: Promise<unknown>, message: string) => {
    setError(null);
    setDone(null);
    what.then(() => (setDone(message), load()), setError);
  };
  const create = (e: Event) => {
    e.preventDefault();
    const body = { username: form.username.trim(), password: form.password, role: form.role, ...(form.customer.trim() ? { customer: form.customer.trim() } : {}) };
    act(call("post", "/v1/users", { body }), `Account ${body.username} added; operators and admins enrol TOTP at their first login.`);
    setForm({ ...form, username: "", password: "" });
  };
  return (
    <section>
      <h1>Users and roles</h1>
      <Failure error={error} />
      {done && (
        <p class="ok" role="status">
          {done}
        </p>
      )}
      {users && (
        <div class="table-wrap">
          <table aria-label="Users">
            <thead>
              <tr>
                <th scope="col">User</th>
                <th scope="col">Role</th>
                <th scope="col">Customer</th>
                <th scope="col">TOTP</th>
                <th scope="col">Added</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {users.map((u) => (
                <tr key={u.username}>
                  <td>{u.username}</td>
                  <td>
                    <select
                      aria-label={`Role of ${u.username}`}
                      value={u.role}
                      disabled={u.username === me.username}
                      onChange={(e) => act(call("patch", "/v1/users/{username}", { path: { username: u.username }, body: { role: e.currentTarget.value as Role } }), `${u.username} is now ${e.currentTarget.value}.`)}
                    >
                      <option value="viewer">viewer</option>
                      <option value="operator">operator</option>
                      <option value="admin">admin</option>
                    </select>
                  </td>
                  <td>{u.customer ?? "— (whole fleet)"}</td>
                  <td>{u.totp_enrolled ? "enrolled" : "not yet"}</td>
                  <td>
                    <Time at={u.created_at} />
                  </td>
                  <td>
                    <div class="row">
                      <button type="button" onClick={() => act(call("post", "/v1/users/{username}/totp/reset", { path: { username: u.username } }), `${u.username} enrols TOTP again at the next login.`)}>
                        Reset TOTP
                      </button>
                      <button type="button" onClick={() => act(call("post", "/v1/users/{username}/sessions/revoke", { path: { username: u.username } }), `Every session of ${u.username} has ended.`)}>
                        End sessions
                      </button>
                      {u.username !== me.username && (
                        <button
                          type="button"
                          class="danger"
                          onClick={() => confirm(`Delete ${u.username}?`) && act(call("delete", "/v1/users/{username}", { path: { username: u.username } }), `${u.username} deleted.`)}
                        >
                          Delete
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
      <h2>Add an account</h2>
      <form class="stack" onSubmit={create}>
        <label>
          User name
          <input name="new-username" required value={form.username} onInput={(e) => setForm({ ...form, username: e.currentTarget.value })} />
        </label>
        <label>
          Password (at least 12 characters)
          <input name="new-password" type="password" autocomplete="new-password" required value={form.password} onInput={(e) => setForm({ ...form, password: e.currentTarget.value })} />
        </label>
        <label>
          Role
          <select name="new-role" value={form.role} onChange={(e) => setForm({ ...form, role: e.currentTarget.value as Role })}>
            <option value="viewer">viewer: reads</option>
            <option value="operator">operator: also acknowledges, resolves, changes lifts</option>
            <option value="admin">admin: also users and the audit log</option>
          </select>
        </label>
        {!me.customer && (
          <label>
            Customer (blank: the lift maker's staff, whole fleet)
            <input name="new-customer" value={form.customer} onInput={(e) => setForm({ ...form, customer: e.currentTarget.value })} />
          </label>
        )}
        <button type="submit">Add account</button>
      </form>
    </section>
  );
}

type TokenRow = Schemas["Token"];

const fromMicros = (us: number | null) => (us === null ? null : new Date(us / 1000).toISOString());

/** The signed-in user's API tokens (for scripts, Prometheus, psql). */
export function Tokens() {
  const [tokens, setTokens] = useState<TokenRow[] | null>(null);
  const [name, setName] = useState("");
  const [days, setDays] = useState("90");
  const [secret, setSecret] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const load = () => call("get", "/v1/auth/tokens").then((r) => setTokens(r.items.filter((t) => t.kind === "api")), setError);
  useEffect(() => {
    load();
  }, []);
  const create = (e: Event) => {
    e.preventDefault();
    setError(null);
    call("post", "/v1/auth/tokens", { body: { name: name.trim(), ...(days ? { expires_days: Number(days) } : {}) } }).then((t) => {
      setSecret(t.token);
      setName("");
      load();
    }, setError);
  };
  return (
    <section>
      <h1>API tokens</h1>
      <p class="muted">A token acts with your role and scope. Send it as <code>Authorization: Bearer …</code>, or as the password of psql.</p>
      {secret && (
        <p role="status" class="ok">
          New token (shown only now): <code data-testid="new-token">{secret}</code>
        </p>
      )}
      <Failure error={error} />
      {tokens && tokens.length === 0 && <p class="muted">No API tokens.</p>}
      {tokens && tokens.length > 0 && (
        <div class="table-wrap">
          <table aria-label="API tokens">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Id</th>
                <th scope="col">Created</th>
                <th scope="col">Expires</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {tokens.map((t) => (
                <tr key={t.id}>
                  <td>{t.name}</td>
                  <td>
                    <code>{t.id}</code>
                  </td>
                  <td>
                    <Time at={fromMicros(t.created_us)} />
                  </td>
                  <td>{t.expires_us ? <Time at={fromMicros(t.expires_us)} /> : "never"}</td>
                  <td>
                    <button type="button" class="danger" onClick={() => call("delete", "/v1/auth/tokens/{id}", { path: { id: t.id } }).then(load, setError)}>
                      Revoke
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>New token</h2>
      <form class="stack" onSubmit={create}>
        <label>
          Name
          <input name="token-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <label>
          Expires after (days; blank: never)
          <input name="token-days" type="number" min={1} value={days} onInput={(e) => setDays(e.currentTarget.value)} />
        </label>
        <button type="submit">Create token</button>
      </form>
    </section>
  );
}



/** Who did what, oldest first within a page, filtered by actor and action. */
export function Audit() {
  const { params } = useLocation();
  const actor = params.get("actor") ?? "";
  const action = params.get("action") ?? "";
  const after = params.get("after") ?? "";
  const [page, setPage] = useState<Schemas["AuditPage"] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    call("get", "/v1/audit", { query: { actor: actor || undefined, action: action || undefined, after: after ? Number(after) : undefined, limit: 100 } }).then(setPage, setError);
  }, [actor, action, after]);
  return (
    <section>
      <h1>Audit log</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <TextFilter label="Actor" name="actor" value={actor} onCommit={(v) => setParam({ actor: v, after: undefined })} />
        <TextFilter label="Action" name="action" value={action} placeholder="login, token.create, …" onCommit={(v) => setParam({ action: v, after: undefined })} />
      </form>
      <Failure error={error} />
      {page && (
        <div class="table-wrap">
          <table aria-label="Audit log">
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">Target</th>
                <th scope="col">Outcome</th>
                <th scope="col">Address</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {page.items.map((e) => (
                <tr key={e.id}>
                  <td>
                    <Time at={e.at} />
                  </td>
                  <td>{e.actor}</td>
                  <td>{e.action}</td>
                  <td>{e.target}</td>
                  <td class={e.outcome === "ok" ? "" : "error"}>{e.outcome}</td>
                  <td>{e.address ?? ""}</td>
                  <td class="wrap">{e.detail}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={!after} onClick={() => setParam({ after: undefined })}>
          First
        </button>
        <button type="button" disabled={!page?.next_after} onClick={() => setParam({ after: String(page?.next_after ?? "") })}>
          Next
        </button>
      </nav>
    </section>
  );
}
