import { useState } from "preact/hooks";
import { Me, TotpEnrolment, call } from "../api";
import { Failure } from "../components";
import { navigate } from "../router";

/** TOTP enrolment: scan the QR code, confirm one code, keep the recovery codes. */
export function Enrol({ me }: { me: Me }) {
  const [enrolment, setEnrolment] = useState<TotpEnrolment | null>(null);
  const [code, setCode] = useState("");
  const [recovery, setRecovery] = useState<string[] | null>(null);
  const [error, setError] = useState<unknown>(null);

  const start = () => {
    setError(null);
    call("post", "/v1/auth/totp").then(setEnrolment, setError);
  };
  const confirm = (e: Event) => {
    e.preventDefault();
    setError(null);
    call("post", "/v1/auth/totp/confirm", { body: { code: code.trim() } }).then(
      (r) => setRecovery(r.recovery_codes),
      setError,
    );
  };

  if (recovery)
    return (
      <section class="narrow">
        <h1>Two-factor sign-in is on</h1>
        <p>Each recovery code signs you in once in place of an authenticator code. Keep them offline; they are shown only now.</p>
        <ul class="codes" aria-label="Recovery codes">
          {recovery.map((c) => (
            <li>
              <code>{c}</code>
            </li>
          ))}
        </ul>
        <button type="button" onClick={() => location.assign("/")}>
          Continue
        </button>
      </section>
    );

  return (
    <section class="narrow">
      <h1>Set up two-factor sign-in</h1>
      {me.totp_enrolled && !enrolment && (
        <p>
          Your account already has an authenticator. Starting again replaces it. <a href="/" onClick={(e) => (e.preventDefault(), navigate("/"))}>Back</a>
        </p>
      )}
      {!enrolment ? (
        <>
          <p>Your role needs a second factor. Use an authenticator app (TOTP, 6 digits, 30 s).</p>
          <button type="button" onClick={start}>
            Show the QR code
          </button>
        </>
      ) : (
        <form onSubmit={confirm} class="stack">
          <img class="qr" alt="QR code of the authenticator secret" src={`data:image/svg+xml;utf8,${encodeURIComponent(enrolment.qr_svg)}`} />
          <p>
            Or enter the secret by hand: <code data-testid="totp-secret">{enrolment.secret}</code>
          </p>
          <label>
            Code from the app
            <input name="code" autocomplete="one-time-code" inputMode="numeric" required value={code} onInput={(e) => setCode(e.currentTarget.value)} />
          </label>
          <button type="submit">Confirm</button>
        </form>
      )}
      <Failure error={error} />
    </section>
  );
}
