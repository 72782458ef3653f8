import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { Link } from "./components";
import { Me, call, can, fleetStaff, whenSignedOut } from "./api";
import { Location, match, navigate, useLocation } from "./router";
import { Login } from "./pages/Login";
import { Enrol } from "./pages/Enrol";
import { Fleet } from "./pages/Fleet";
import { Building } from "./pages/Building";
import { Lift } from "./pages/Lift";
import { Alerts } from "./pages/Alerts";
import { Activate } from "./pages/Activate";
import { Sql } from "./pages/Sql";
import { Rules } from "./pages/Rules";
import { Audit, Tokens, Users } from "./pages/Admin";
import { DeadLetters, Storage } from "./pages/Operations";
import { ApiDocs } from "./pages/ApiDocs";

function NotFound() {
  return (
    <section>
      <h1>Not found</h1>
      <p>
        There is no page here. <Link href="/">Back to the fleet</Link>.
      </p>
    </section>
  );
}

function Refused() {
  return (
    <section>
      <h1>Not allowed</h1>
      <p>Your role does not include this page.</p>
    </section>
  );
}

function page(loc: Location, me: Me) {
  const { path } = loc;
  let m: Record<string, string> | null;
  if (path === "/" || path === "/fleet") return <Fleet me={me} />;
  if ((m = match("/lifts/:id", path))) return <Lift id={m.id} me={me} />;
  if ((m = match("/buildings/:id", path))) return <Building id={m.id} />;
  if (path === "/alerts") return <Alerts me={me} />;
  if (path === "/activate") return fleetStaff(me, "operator") ? <Activate /> : <Refused />;
  if (path === "/sql") return <Sql />;
  if (path === "/rules") return fleetStaff(me, "viewer") ? <Rules me={me} /> : <Refused />;
  if (path === "/users") return can(me, "admin") ? <Users me={me} /> : <Refused />;
  if (path === "/audit") return can(me, "admin") ? <Audit /> : <Refused />;
  if (path === "/tokens") return <Tokens />;
  if (path === "/dead-letters") return <DeadLetters me={me} />;
  if (path === "/storage") return fleetStaff(me, "viewer") ? <Storage me={me} /> : <Refused />;
  if (path === "/enrol") return <Enrol me={me} />;
  if (path === "/api") return <ApiDocs />;
  return <NotFound />;
}

function Nav({ me, path, onLogout }: { me: Me; path: string; onLogout: () => void }) {
  const items: [string, string, boolean][] = [
    ["/", "Fleet", true],
    ["/alerts", "Alerts", true],
    ["/activate", "Activate a lift", fleetStaff(me, "operator")],
    ["/sql", "SQL", true],
    ["/rules", "Rules", fleetStaff(me, "viewer")],
    ["/dead-letters", "Dead letters", true],
    ["/storage", "Storage", fleetStaff(me, "viewer")],
    ["/users", "Users", can(me, "admin")],
    ["/audit", "Audit", can(me, "admin")],
    ["/tokens", "API tokens", true],
    ["/api", "API", true],
  ];
  return (
    <header class="top">
      <Link href="/" class="brand">
        Hoistway
      </Link>
      <nav aria-label="Main">
        {items
          .filter(([, , shown]) => shown)
          .map(([href, label]) => (
            <Link href={href} aria-current={path === href || (href === "/" && path === "/fleet") ? "page" : undefined}>
              {label}
            </Link>
          ))}
      </nav>
      <div class="who">
        <span title={me.customer ? `customer ${me.customer}` : "lift maker's staff"}>
          {me.username} · {me.role}
          {me.customer ? ` · ${me.customer}` : ""}
        </span>
        <button type="button" class="link" onClick={onLogout}>
          Log out
        </button>
      </div>
    </header>
  );
}

function App() {
  const loc = useLocation();
  const [me, setMe] = useState<Me | null | undefined>(undefined);

  const load = () =>
    call("get", "/v1/auth/me")
      .then((m) => {
        setMe(m);
        if (!m.totp_enrolled && can(m, "operator") && location.pathname !== "/enrol") navigate("/enrol", true);
      })
      .catch(() => setMe(null));
  useEffect(() => {
    whenSignedOut(() => setMe(null));
    load();
  }, []);

  if (me === undefined) return <p class="loading">Loading…</p>;
  if (me === null)
    return (
      <main id="main">
        <Login
          onDone={(enrol) => {
            if (enrol) navigate("/enrol", true);
            load();
          }}
        />
      </main>
    );
  const logout = () =>
    call("post", "/v1/auth/logout")
      .catch(() => undefined)
      .finally(() => {
        setMe(null);
        navigate("/", true);
      });
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <Nav me={me} path={loc.path} onLogout={logout} />
      <main id="main">{page(loc, me)}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
