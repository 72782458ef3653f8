// End-to-end test of the web UI in a real browser (Debian's Chromium, driven by playwright-core),
// against a running `hoistway serve` with the simulator. Started by the Rust test
// `ui::the_web_ui_does_the_daily_tasks_in_a_real_browser` (crates/hoistway/tests), which passes:
//   HOISTWAY_URL     the server, e.g. http://127.0.0.1:40000
//   HOISTWAY_TOKEN   an admin API token (to set up accounts and act as a lift would)
//   SCREENSHOTS      where to save the main pages' screenshots
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
// Exits non-zero with a message on the first failed step.

import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const base = process.env.HOISTWAY_URL;
const adminToken = process.env.HOISTWAY_TOKEN;
const shots = process.env.SCREENSHOTS ?? "screenshots";
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
mkdirSync(shots, { recursive: true });

let step = "start";
function check(cond, message) {
  if (!cond) throw new Error(`${step}: ${message}`);
}
async function api(method, path, body, token = adminToken) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  let payload;
  if (typeof body === "string") {
    headers["content-type"] = "application/x-www-form-urlencoded";
    payload = body;
  } else if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(base + path, { method, headers, body: payload });
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: r.status, json, text };
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// RFC 6238 with SHA-1, 6 digits, 30 s: what an authenticator app computes.
function base32(s) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0,
    value = 0;
  const out = [];
  for (const c of s.replace(/=+$/, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}
function totp(secret, at = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30000)));
  const h = createHmac("sha1", base32(secret)).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1e6).padStart(6, "0");
}

async function axe(page, name) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `accessibility on ${name}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join("; ")}`).join(" | ")}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
}

async function login(page, username, password, code) {
  await page.goto(base + "/");
  await page.getByLabel("User name").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  if (code) {
    await page.getByLabel(/Authenticator code/).fill(typeof code === "function" ? code() : code);
    await page.getByRole("button", { name: "Verify" }).click();
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
const failures = [];
try {
  // Accounts: an operator of the lift maker (needs TOTP), a viewer, a customer's viewer.
  step = "accounts";
  for (const [username, role, customer] of [
    ["olivia", "admin", null],
    ["victor", "viewer", null],
    ["carla", "viewer", "customer-nobody"],
  ]) {
    const r = await api("POST", "/v1/users", { username, password: `${username}-secret-pw`, role, ...(customer ? { customer } : {}) });
    check(r.status === 201, `create ${username}: ${r.status} ${r.text}`);
  }

  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1280, height: 900 }, timezoneId: "Europe/Zurich" });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));

  // Login, then TOTP enrolment with the QR code's secret, then the recovery codes.
  step = "login and enrol";
  await login(page, "olivia", "olivia-secret-pw");
  await page.getByRole("heading", { name: "Set up two-factor sign-in" }).waitFor();
  await page.getByRole("button", { name: "Show the QR code" }).click();
  await page.getByRole("img", { name: /QR code/ }).waitFor();
  const secret = (await page.getByTestId("totp-secret").textContent()).trim();
  const enrolledAt = Date.now();
  await page.getByLabel("Code from the app").fill(totp(secret));
  await page.getByRole("button", { name: "Confirm" }).click();
  await page.getByRole("list", { name: "Recovery codes" }).waitFor();
  const codes = await page.getByRole("list", { name: "Recovery codes" }).locator("code").allTextContents();
  check(codes.length === 10, `ten recovery codes, got ${codes.length}`);
  await page.getByRole("button", { name: "Continue" }).click();

  // The fleet: counts, and the simulated lifts in the list.
  step = "fleet";
  await page.getByRole("heading", { name: "Fleet", exact: true }).waitFor();
  await page.getByRole("link", { name: "SIM-000001" }).waitFor();
  await page.getByTestId("rate").filter({ hasText: /^\d/ }).waitFor();
  await shot(page, "fleet");
  await axe(page, "fleet");
  // Dark, on a phone, by keyboard.
  await page.emulateMedia({ colorScheme: "dark" });
  await axe(page, "fleet (dark)");
  await shot(page, "fleet-dark");
  await page.emulateMedia({ colorScheme: "light" });
  await page.setViewportSize({ width: 390, height: 844 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `the fleet page fits a phone's width (${width} px)`);
  await shot(page, "fleet-phone");
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.reload();
  await page.getByRole("link", { name: "SIM-000001" }).waitFor();
  await page.keyboard.press("Tab");
  check((await page.evaluate(() => document.activeElement?.textContent)) === "Skip to content", "the first Tab reaches the skip link");
  await page.getByLabel("Search").fill("SIM-000002");
  await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 1);
  check((await page.locator("tbody tr").first().textContent()).includes("SIM-000002"), "search finds the lift");
  check(page.url().includes("q=SIM-000002"), "the search is in the address");

  // Activation: a lift asks (device flow), the operator enters its code and building.
  step = "activate";
  const asked = await api("POST", "/oauth/device_authorization", "client_id=UI-LIFT-1", null);
  check(asked.status === 200, `device authorization: ${asked.text}`);
  await page.getByRole("link", { name: "Activate a lift" }).click();
  await page.getByLabel("Code").fill(asked.json.user_code);
  await page.getByRole("button", { name: "Look up" }).click();
  check((await page.getByTestId("request-lift").textContent()) === "UI-LIFT-1", "the code names the lift");
  await page.getByLabel(/^Building/).fill("B-UI");
  await shot(page, "activate");
  await axe(page, "activate");
  await page.getByRole("button", { name: "Approve" }).click();
  await page.getByText("Lift UI-LIFT-1 is approved").waitFor();
  // The lift collects its tokens and reports, as its controller would.
  let liftToken = null;
  for (let i = 0; i < 20 && !liftToken; i++) {
    const t = await api("POST", "/oauth/token", `grant_type=urn:ietf:params:oauth:grant-type:device_code&device_code=${asked.json.device_code}&client_id=UI-LIFT-1`, null);
    if (t.status === 200) liftToken = t.json.access_token;
    else await sleep(1100);
  }
  check(liftToken, "the approved lift gets its token");
  const reading = (seq, events = []) => ({
    lift_id: "UI-LIFT-1",
    seq,
    ts: new Date().toISOString(),
    floor: seq % 7,
    direction: "up",
    door: "closed",
    load_kg: 320,
    speed_mps: 1.2,
    motor_temp_c: 44,
    vibration_mm_s: 0.9,
    trips: 1,
    door_cycles: 2,
    faults: [],
    events,
  });
  let r = await api("POST", "/v1/telemetry", reading(1), liftToken);
  check(r.status === 200, `telemetry: ${r.status} ${r.text}`);
  await page.goto(base + "/lifts/UI-LIFT-1");
  await page.waitForFunction(() => document.querySelector('[data-testid="readings"]')?.textContent === "1");
  check((await page.getByTestId("floor").textContent()) === "1", "the activated lift reports its floor");

  // Live data: the page changes with no reload as the lift reports (server-sent events).
  step = "live";
  await page.getByText("live", { exact: true }).waitFor();
  r = await api("POST", "/v1/telemetry", reading(2), liftToken);
  check(r.status === 200, `telemetry: ${r.text}`);
  await page.waitForFunction(() => document.querySelector('[data-testid="readings"]')?.textContent === "2", null, { timeout: 10000 });
  check((await page.getByTestId("floor").textContent()) === "2", "the floor follows the lift");

  // A simulated lift's 24 h chart, from 2-minute buckets of raw readings.
  step = "chart";
  await page.goto(base + "/lifts/SIM-000001");
  await page.getByRole("button", { name: "24 h" }).click();
  await page.getByTestId("chart-source").waitFor();
  const source = await page.getByTestId("chart-source").textContent();
  check(/^[1-9]\d* points \(one per 2 min\)/.test(source), `24 h chart source: ${source}`);
  await page.locator(".chart canvas").nth(3).waitFor();
  const points = await page.locator(".chart [data-points]").first().getAttribute("data-points");
  check(Number(points) > 0 && Number(points) <= 720, `no more points than pixels: ${points}`);
  await shot(page, "lift");
  await axe(page, "lift");
  await page.getByRole("button", { name: "1 y" }).click();
  await page.getByText(/points \(one per day\)/).waitFor();

  // The building page: every lift of the building, live.
  step = "building";
  await page.goto(base + "/buildings/B00000");
  await page.getByRole("list", { name: "Lifts of building B00000" }).waitFor();
  check((await page.locator(".shaft").count()) >= 2, "the building's lifts");
  await shot(page, "building");
  await axe(page, "building");

  // An alert: the activated lift's alarm button; acknowledged with a note in the inbox.
  step = "alert";
  r = await api("POST", "/v1/telemetry", reading(3, ["alarm_button"]), liftToken);
  check(r.status === 200, `telemetry: ${r.text}`);
  await page.getByRole("link", { name: "Alerts" }).click();
  await page.getByLabel("Lift").fill("UI-LIFT-1");
  await page.waitForURL(/lift=UI-LIFT-1/);
  const alarm = page.getByRole("button", { name: /Alarm button pressed/ });
  await alarm.waitFor({ timeout: 20000 });
  await alarm.click();
  await page.getByLabel(/^Note/).fill("called the building; false alarm");
  await shot(page, "alerts");
  await axe(page, "alerts");
  await page.getByRole("button", { name: "Acknowledge" }).click();
  await page.getByText(/acknowledged by olivia — called the building; false alarm/).waitFor();
  const listed = await api("GET", "/v1/alerts?lift=UI-LIFT-1");
  check(listed.json.items[0].state === "acknowledged", `the server has it acknowledged: ${listed.text}`);

  // SQL: run a query, see the table, download CSV.
  step = "sql";
  await page.getByRole("link", { name: "SQL" }).click();
  await page.getByLabel("Query", { exact: true }).fill("SELECT lift_id, readings_total FROM lift_state ORDER BY lift_id LIMIT 5");
  await page.getByRole("button", { name: "Run" }).click();
  await page.getByText(/^5 rows in/).waitFor();
  check((await page.locator("table[aria-label='Query result'] tbody tr").count()) === 5, "five rows shown");
  await shot(page, "sql");
  await axe(page, "sql");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download CSV" }).click()]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  check(csv[0] === "lift_id,readings_total" && csv.length === 6, `the CSV: ${csv.join(" / ")}`);
  // A time series result is also drawn.
  await page.getByLabel("Query", { exact: true }).fill("SELECT date_bin(INTERVAL '5 seconds', ts) AS t, avg(motor_temp_c) AS motor_temp_c FROM readings GROUP BY 1 ORDER BY 1");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("figure.chart figcaption", { hasText: "Result" }).waitFor();

  // Rules: a bad id is shown beside the field, then the rule is saved and listed.
  step = "rules";
  await page.getByRole("link", { name: "Rules" }).click();
  await page.getByRole("button", { name: "New rule" }).click();
  await page.getByLabel(/^Id/).fill("Bad Id!");
  await page.getByLabel(/^Name/).fill("Motor hot (UI)");
  await page.getByRole("button", { name: "Save rule" }).click();
  await page.locator("#err-id").waitFor();
  check((await page.getByLabel(/^Id/).getAttribute("aria-invalid")) === "true", "the id field is marked invalid");
  await shot(page, "rules");
  await axe(page, "rules");
  await page.getByLabel(/^Id/).fill("motor-hot-ui");
  await page.getByRole("button", { name: "Save rule" }).click();
  await page.getByRole("cell", { name: /Motor hot \(UI\)/ }).waitFor();
  const rules = await api("GET", "/v1/alert-rules");
  check(rules.json.items.some((r) => r.id === "motor-hot-ui" && r.when.kind === "threshold"), "the server has the new rule");

  // Users, API tokens, the audit log, dead letters and storage.
  step = "admin pages";
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByRole("cell", { name: "carla", exact: true }).waitFor();
  await axe(page, "users");
  await page.getByRole("link", { name: "API tokens" }).click();
  await page.getByLabel("Name").fill("grafana");
  await page.getByRole("button", { name: "Create token" }).click();
  check((await page.getByTestId("new-token").textContent()).startsWith("hwt_"), "the new token is shown once");
  await page.getByRole("cell", { name: "grafana" }).waitFor();
  await page.getByRole("link", { name: "Audit" }).click();
  await page.getByLabel("Action").fill("token.create");
  await page.getByRole("cell", { name: "token.create" }).first().waitFor();
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.getByRole("heading", { name: "Dead letters" }).waitFor();
  await page.getByRole("link", { name: "Storage" }).click();
  await page.getByRole("table", { name: "Storage tiers" }).waitFor();
  await axe(page, "storage");

  // The API reference, read from the server's OpenAPI document.
  step = "api reference";
  await page.getByRole("link", { name: "API", exact: true }).click();
  await page.getByRole("heading", { name: /Hoistway API/ }).waitFor();
  await page.getByLabel("Find").fill("telemetry");
  await page.getByLabel("Find").press("Enter");
  await page.locator("summary", { hasText: "/v1/telemetry" }).click();
  await page.getByRole("link", { name: "TelemetryReading" }).first().waitFor();
  check((await page.locator("summary", { hasText: "/v1/sql" }).count()) === 0, "the search keeps only matching operations");
  await page.getByRole("link", { name: "TelemetryResponse" }).first().click();
  await page.locator("#schema-TelemetryResponse").getByText("duplicates").waitFor();
  await axe(page, "api reference");
  await shot(page, "api");

  // Log out, then in again with a TOTP code (a step after the one used to enrol).
  step = "totp login";
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("heading", { name: "Sign in to Hoistway" }).waitFor();
  const wait = 30000 - (enrolledAt % 30000) + 500;
  if (Math.floor(Date.now() / 30000) === Math.floor(enrolledAt / 30000)) await sleep(wait);
  await login(page, "olivia", "olivia-secret-pw", () => totp(secret));
  await page.getByRole("heading", { name: "Fleet", exact: true }).waitFor();
  await context.close();

  // A viewer: no admin pages in the menu, and refused by URL and by the server.
  step = "viewer";
  const viewer = await (await browser.newContext()).newPage();
  viewer.setDefaultTimeout(15000);
  await login(viewer, "victor", "victor-secret-pw");
  await viewer.getByRole("heading", { name: "Fleet", exact: true }).waitFor();
  check((await viewer.getByRole("link", { name: "Activate a lift" }).count()) === 0, "no activation link for a viewer");
  await viewer.goto(base + "/activate");
  await viewer.getByRole("heading", { name: "Not allowed" }).waitFor();
  const refused = await viewer.evaluate(async () => (await fetch("/v1/devices/requests/BCDF-GHJK")).status);
  check(refused === 403, `the server refuses a viewer the activation API: ${refused}`);

  // A customer's user cannot see another customer's lift, even by its URL.
  step = "tenancy";
  const customer = await (await browser.newContext()).newPage();
  customer.setDefaultTimeout(15000);
  await login(customer, "carla", "carla-secret-pw");
  await customer.getByRole("heading", { name: "Fleet", exact: true }).waitFor();
  await customer.getByText("No lift matches.").waitFor();
  check((await customer.locator("tbody tr").count()) === 0, "no other customer's lift in the list");
  await customer.goto(base + "/lifts/SIM-000001");
  await customer.getByText(/not registered|neither registered/).waitFor();
  check((await customer.locator('[data-testid="floor"]').count()) === 0, "no state of another customer's lift");
} catch (e) {
  failures.push(e.message);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`UI test failed:\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("UI test passed");
