// The HTTP API (docs/api.md), as the UI uses it. The browser is signed in by the session cookie
// that login sets; every change carries the CSRF token from the readable cookie.

export type Role = "viewer" | "operator" | "admin";
export type LiftStatus = "reporting" | "faulted" | "silent" | "never_reported";
export type Severity = "info" | "warning" | "major" | "critical";
export type AlertState = "firing" | "acknowledged" | "resolved";

export interface Me {
  username: string;
  role: Role;
  customer: string | null;
  totp_enrolled: boolean;
  second_factor: boolean;
  recovery_codes_left: number;
}

export interface LoginAnswer {
  username: string;
  role: Role;
  customer: string | null;
  second_factor: boolean;
  enrolment_required: boolean;
}

export interface LiftView {
  lift_id: string;
  building: string;
  site: string;
  customer: string;
  model: string;
  status: LiftStatus;
  epoch: number | null;
  last_seq: number | null;
  last_ts: string | null;
  last_received_at: string | null;
  floor: number | null;
  direction: "up" | "down" | "idle" | null;
  door: string | null;
  load_kg: number | null;
  speed_mps: number | null;
  motor_temp_c: number | null;
  vibration_mm_s: number | null;
  faults: string[];
  entrapped: boolean;
  in_maintenance: boolean;
  readings_total: number;
  trips_total: number;
  door_cycles_total: number;
  events_total: number;
}

export interface LiftPage {
  items: LiftView[];
  next_after: string | null;
}

export interface FleetSummary {
  lifts: number;
  reporting: number;
  faulted: number;
  silent: number;
  never_reported: number;
  entrapped: number;
  in_maintenance: number;
  readings_total: number;
}

export interface LiftInfo {
  lift_id: string;
  building: string;
  site: string;
  customer: string;
  model: string;
  install_date: string | null;
  initial_trips: number;
}

export interface Stamp {
  by: string;
  at: string;
  note?: string;
}

export interface Alert {
  id: number;
  rule: string;
  rule_name: string;
  severity: Severity;
  state: AlertState;
  lift_id: string;
  customer: string;
  building: string;
  model: string;
  summary: string;
  value?: number;
  fired_at: string;
  last_fired_at: string;
  refires: number;
  acknowledged?: Stamp;
  resolved?: Stamp;
}

export interface AlertEvent {
  alert_id: number;
  kind: "fired" | "refired" | "reopened" | "acknowledged" | "resolved" | "escalated";
  at: string;
  by: string;
  note?: string;
}

export interface AlertPage {
  items: Alert[];
  next_before: string | null;
}

export interface QueryAnswer {
  columns: { name: string; type: string }[];
  rows: Record<string, unknown>[];
  row_count: number;
  truncated: boolean;
  elapsed_ms: number;
}

export interface DeviceRequest {
  lift_id: string;
  user_code: string;
  requested_at: string;
  expires_at: string;
  registered: boolean;
}

export interface TotpEnrolment {
  secret: string;
  otpauth_uri: string;
  qr_svg: string;
}

export interface FieldProblem {
  field: string;
  message: string;
}

export interface Rule {
  id: string;
  name: string;
  description?: string;
  severity: Severity;
  scope: { customer?: string; building?: string; model?: string; lift?: string };
  enabled: boolean;
  hold_secs: number;
  when: { kind: string; [param: string]: unknown };
}

/** An RFC 9457 problem the server answered with. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    readonly detail: string,
    readonly errors: FieldProblem[] = [],
  ) {
    super(detail);
  }
}

function csrfToken(): string {
  const m = document.cookie.match(/(?:^|;\s*)hoistway_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

/** Called when the session ends (401), so the app shows the login page. */
let onSignedOut: () => void = () => {};
export function whenSignedOut(f: () => void) {
  onSignedOut = f;
}

export async function request(method: string, path: string, body?: unknown, accept = "application/json"): Promise<Response> {
  const headers: Record<string, string> = { accept };
  if (method !== "GET" && method !== "HEAD") headers["x-csrf-token"] = csrfToken();
  let payload: BodyInit | undefined;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (!resp.ok) {
    let p: { type?: string; detail?: string; title?: string; errors?: FieldProblem[] } = {};
    try {
      p = await resp.json();
    } catch {
      /* not problem+json */
    }
    const type = (p.type ?? "").split("/").pop() ?? "";
    if (resp.status === 401 && !path.startsWith("/v1/auth/login")) onSignedOut();
    throw new ApiError(resp.status, type, p.detail ?? p.title ?? resp.statusText, p.errors ?? []);
  }
  return resp;
}

export async function get<T>(path: string): Promise<T> {
  return (await request("GET", path)).json();
}

export async function post<T>(path: string, body?: unknown): Promise<T> {
  return send<T>("POST", path, body ?? {});
}

/** A change (`POST`, `PUT`, `PATCH`, `DELETE`); `undefined` for 204. */
export async function send<T>(method: string, path: string, body?: unknown): Promise<T> {
  const resp = await request(method, path, body);
  return resp.status === 204 ? (undefined as T) : resp.json();
}

/** `?a=1&b=2` of the set values. */
export function qs(params: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
}

export const enc = encodeURIComponent;

/** Whether `me` has at least `role`. */
export function can(me: Me | null, role: Role): boolean {
  const rank = { viewer: 0, operator: 1, admin: 2 };
  return !!me && rank[me.role] >= rank[role];
}

/** The lift maker's staff (no customer) see the whole fleet and its upkeep pages. */
export function fleetStaff(me: Me | null, role: Role): boolean {
  return can(me, role) && !me?.customer;
}
