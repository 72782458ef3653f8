import { useState } from "preact/hooks";
import { ApiError, call } from "../api";
import { Failure } from "../components";

/** Password, then (for an account with TOTP) the authenticator or a recovery code. */
export function Login({ onDone }: { onDone: (enrol: boolean) => void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [needCode, setNeedCode] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const a = await call("post", "/v1/auth/login", { body: {
        username,
        password,
        ...(needCode ? { code: code.replace(/\s+/g, "") } : {}),
      } });
      onDone(a.enrolment_required);
    } catch (err) {
      if (err instanceof ApiError && err.type === "second-factor-required" && !needCode) setNeedCode(true);
      else setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="login">
      <h1>Sign in to Hoistway</h1>
      <form onSubmit={submit} class="stack">
        <label>
          User name
          <input name="username" autocomplete="username" required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autocomplete="current-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {needCode && (
          <label>
            Authenticator code (or a recovery code)
            <input
              name="code"
              autocomplete="one-time-code"
              inputMode="numeric"
              required
              autoFocus
              value={code}
              onInput={(e) => setCode(e.currentTarget.value)}
            />
          </label>
        )}
        <Failure error={error} />
        <button type="submit" disabled={busy}>
          {needCode ? "Verify" : "Sign in"}
        </button>
      </form>
    </section>
  );
}
