import { useEffect, useState } from "preact/hooks";
import { DeviceRequest, call } from "../api";
import { Failure, Link } from "../components";
import { Time } from "../format";
import { useLocation } from "../router";

/** RFC 8628's verification page: the code a lift shows, then the building it is in. */
export function Activate() {
  const { params } = useLocation();
  const [code, setCode] = useState(params.get("user_code") ?? "");
  const [request, setRequest] = useState<DeviceRequest | null>(null);
  const [building, setBuilding] = useState("");
  const [site, setSite] = useState("");
  const [customer, setCustomer] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);

  const lookUp = (e?: Event) => {
    e?.preventDefault();
    setError(null);
    setDone(null);
    call("get", "/v1/devices/requests/{user_code}", { path: { user_code: code.trim() } }).then(setRequest, (err) => (setRequest(null), setError(err)));
  };
  useEffect(() => {
    if (code) lookUp();
  }, []);

  const decide = (approve: boolean) => (e: Event) => {
    e.preventDefault();
    setError(null);
    const body = approve
      ? { user_code: request!.user_code, building: building.trim() || undefined, site: site.trim() || undefined, customer: customer.trim() || undefined }
      : { user_code: request!.user_code };
    call("post", approve ? "/v1/devices/approve" : "/v1/devices/deny", { body }).then(() => {
      setDone(approve ? `Lift ${request!.lift_id} is approved; it collects its tokens at its next poll.` : `The request of ${request!.lift_id} is refused.`);
      setRequest(null);
      setCode("");
    }, setError);
  };

  return (
    <section class="narrow">
      <h1>Activate a lift</h1>
      <p>Enter the code the lift's controller shows.</p>
      <form class="stack" onSubmit={lookUp}>
        <label>
          Code
          <input name="user_code" placeholder="BCDF-GHJK" autocomplete="off" required value={code} onInput={(e) => setCode(e.currentTarget.value.toUpperCase())} />
        </label>
        <button type="submit">Look up</button>
      </form>
      {request && (
        <form class="stack" onSubmit={decide(true)} aria-label="Approve the lift">
          <dl class="facts">
            <dt>Lift</dt>
            <dd data-testid="request-lift">{request.lift_id}</dd>
            <dt>Asked</dt>
            <dd>
              <Time at={request.requested_at} />
            </dd>
            <dt>Code expires</dt>
            <dd>
              <Time at={request.expires_at} />
            </dd>
            <dt>Registered</dt>
            <dd>{request.registered ? "yes (approval may move it)" : "no (give its building)"}</dd>
          </dl>
          <label>
            Building {request.registered ? "(blank: keep)" : ""}
            <input name="building" required={!request.registered} value={building} onInput={(e) => setBuilding(e.currentTarget.value)} />
          </label>
          <label>
            Site (optional)
            <input name="site" value={site} onInput={(e) => setSite(e.currentTarget.value)} />
          </label>
          <label>
            Customer (optional)
            <input name="customer" value={customer} onInput={(e) => setCustomer(e.currentTarget.value)} />
          </label>
          <div class="row">
            <button type="submit">Approve</button>
            <button type="button" class="danger" onClick={decide(false)}>
              Deny
            </button>
          </div>
        </form>
      )}
      <Failure error={error} />
      {done && (
        <p role="status" class="ok">
          {done} {done.startsWith("Lift") && request === null && <Link href="/">Back to the fleet</Link>}
        </p>
      )}
    </section>
  );
}
