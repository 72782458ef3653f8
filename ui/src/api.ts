// The HTTP API (docs/api.md), as the UI uses it. The browser is signed in by the session cookie
// that login sets; every change carries the CSRF token from the readable cookie.

import type { components, paths } from "../generated/api-schema";

/**
 * The API's types, generated (`npm run types`, openapi-typescript) from the server's OpenAPI
 * document committed as `ui/openapi.json`: a change to a server type that the UI does not follow
 * fails `tsc`.
 */
export type Schemas = components["schemas"];

export type Role = Schemas["Role"];
export type LiftStatus = Schemas["LiftStatus"];
export type Severity = Schemas["Severity"];
export type AlertState = Schemas["AlertState"];
export type Me = Schemas["Me"];
export type LoginAnswer = Schemas["LoginAnswer"];
export type LiftView = Schemas["LiftView"];
export type LiftPage = Schemas["LiftPage"];
export type FleetSummary = Schemas["FleetSummary"];
export type LiftInfo = Schemas["LiftInfo"];
export type Stamp = Schemas["Stamp"];
export type Alert = Schemas["Alert"];
export type AlertEvent = Schemas["AlertEvent"];
export type AlertPage = Schemas["AlertPage"];
export type QueryAnswer = Schemas["QueryAnswer"];
export type DeviceRequest = Schemas["DeviceRequest"];
export type TotpEnrolment = Schemas["TotpEnrolment"];
export type FieldProblem = Schemas["FieldProblem"];
export type Rule = Schemas["Rule"];

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

type Method = "get" | "post" | "put" | "patch" | "delete";

/** The API's paths that take `method`. */
export type PathOf<M extends Method> = {
  [P in keyof paths]: paths[P][M] extends { responses: unknown } ? P : never;
}[keyof paths];

type Operation<M extends Method, P extends PathOf<M>> = paths[P][M];

/** The JSON body of the operation's successful (2xx) answers; `undefined` for 204. */
export type Answer<Op> = Op extends { responses: infer R }
  ? {
      [C in keyof R]: C extends 200 | 201 | 202
        ? R[C] extends { content: { "application/json": infer B } }
          ? B
          : never
        : C extends 204
          ? undefined
          : never;
    }[keyof R]
  : never;

type Parameters<Op, Where extends "path" | "query"> = Op extends { parameters: { [K in Where]?: infer T } } ? Exclude<T, undefined> : never;
type JsonBody<Op> = Op extends { requestBody?: { content: { "application/json": infer B } } } ? B : never;

/** What a call may carry: path parameters, query parameters and a JSON body, each as the operation declares. */
export type CallOptions<Op> = ([Parameters<Op, "path">] extends [never] ? { path?: never } : { path: Parameters<Op, "path"> }) & {
  query?: Parameters<Op, "query">;
  body?: JsonBody<Op>;
};

/**
 * One API call, typed by the OpenAPI document: `method` and `path` pick the operation, whose
 * parameters, body and answer the compiler then checks. `path` is the document's template
 * (`/v1/lifts/{lift_id}`); its parameters come from `options.path`.
 */
export async function call<M extends Method, P extends PathOf<M>>(
  method: M,
  path: P,
  ...[options]: [Parameters<Operation<M, P>, "path">] extends [never] ? [CallOptions<Operation<M, P>>?] : [CallOptions<Operation<M, P>>]
): Promise<Answer<Operation<M, P>>> {
  const o = (options ?? {}) as { path?: Record<string, string | number>; query?: Record<string, string | number | undefined | null>; body?: unknown };
  const filled = (path as string).replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(String(o.path?.[name] ?? "")));
  const body = o.body ?? (method === "post" ? {} : undefined);
  const resp = await request(method.toUpperCase(), filled + qs(o.query ?? {}), method === "get" ? undefined : body);
  return (resp.status === 204 ? undefined : await resp.json()) as Answer<Operation<M, P>>;
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
