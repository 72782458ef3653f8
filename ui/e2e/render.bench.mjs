// The fleet page's first render in Chromium (headless), for `hoistway bench --ui-only`: signs in
// as HOISTWAY_USER, then loads the fleet page five times and reports the time from navigation to
// the first rows of the lift list and to the counts. Prints one Markdown line.
import { chromium } from "playwright-core";

const base = process.env.HOISTWAY_URL;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const login = await page.request.post(`${base}/v1/auth/login`, { data: { username: process.env.HOISTWAY_USER, password: process.env.HOISTWAY_PASSWORD } });
if (!login.ok()) throw new Error(`login: ${login.status()} ${await login.text()}`);
const times = [];
for (let i = 0; i < 6; i++) {
  await page.goto(`${base}/`, { waitUntil: "commit" });
  await page.locator("tbody tr").first().waitFor();
  await page.getByText("reporting", { exact: true }).first().waitFor();
  const ms = await page.evaluate(() => performance.now());
  if (i > 0) times.push(ms); // the first load fills the browser's cache, as a returning user has it
}
await browser.close();
times.sort((a, b) => a - b);
console.log(
  `first render of the fleet page (list rows and counts), warm cache: median ${times[Math.floor(times.length / 2)].toFixed(0)} ms, best ${times[0].toFixed(0)} ms, worst ${times[times.length - 1].toFixed(0)} ms`,
);
