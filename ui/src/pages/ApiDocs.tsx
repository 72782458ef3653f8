// The API reference, read from the server's own OpenAPI document (`/openapi.json`).

import { useEffect, useMemo, useState } from "preact/hooks";
import { TextFilter, Failure } from "../components";
import { setParam, useLocation } from "../router";

/** The parts of an OpenAPI 3.1 document this page shows. */
interface Schema {
  $ref?: string;
  type?: string | string[];
  format?: string;
  description?: string;
  enum?: unknown[];
  items?: Schema;
  prefixItems?: Schema[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: Schema | boolean;
  oneOf?: Schema[];
  anyOf?: Schema[];
  allOf?: Schema[];
  pattern?: string;
}
interface Content {
  [mediaType: string]: { schema?: Schema };
}
interface Parameter {
  name: string;
  in: string;
  required?: boolean;
  description?: string;
  schema?: Schema;
}
interface Operation {
  summary?: string;
  description?: string;
  tags?: string[];
  parameters?: Parameter[];
  requestBody?: { description?: string; content?: Content; required?: boolean };
  responses: Record<string, { description?: string; content?: Content }>;
  "x-hoistway-access"?: string;
}
interface Document {
  info: { title: string; version: string; description?: string };
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, Schema> };
}

const METHODS = ["get", "post", "put", "patch", "delete"];

function refName(ref: string): string {
  return ref.split("/").pop() ?? ref;
}

/** Opens the collapsed description `id` (a link's target), so following the link shows it. */
function reveal(id: string) {
  (document.getElementById(id) as HTMLDetailsElement | null)?.setAttribute("open", "");
}

/** A schema as a short type expression; named schemas link to their description below. */
function TypeOf({ schema }: { schema?: Schema }): preact.JSX.Element {
  if (!schema) return <span class="muted">any</span>;
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return (
      <a href={`#schema-${name}`} onClick={() => reveal(`schema-${name}`)}>
        {name}
      </a>
    );
  }
  const union = schema.oneOf ?? schema.anyOf;
  if (union)
    return (
      <>
        {union.map((s, i) => (
          <>
            {i > 0 && " | "}
            <TypeOf schema={s} />
          </>
        ))}
      </>
    );
  if (schema.allOf)
    return (
      <>
        {schema.allOf.map((s, i) => (
          <>
            {i > 0 && " & "}
            <TypeOf schema={s} />
          </>
        ))}
      </>
    );
  if (schema.enum) return <>{schema.enum.map((v) => JSON.stringify(v)).join(" | ")}</>;
  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  const nullable = types.includes("null");
  const base = types.filter((t) => t !== "null")[0];
  let shown: preact.JSX.Element;
  if (base === "array" && schema.prefixItems)
    shown = (
      <>
        [
        {schema.prefixItems.map((s, i) => (
          <>
            {i > 0 && ", "}
            <TypeOf schema={s} />
          </>
        ))}
        ]
      </>
    );
  else if (base === "array")
    shown = (
      <>
        <TypeOf schema={schema.items} />
        []
      </>
    );
  else if (base === "object" && schema.properties) shown = <>object</>;
  else if (base === "object" && typeof schema.additionalProperties === "object")
    shown = (
      <>
        map of <TypeOf schema={schema.additionalProperties} />
      </>
    );
  else shown = <>{(base ?? "any") + (schema.format ? ` (${schema.format})` : "")}</>;
  return nullable ? <>{shown} | null</> : shown;
}

/** An object schema's fields, or a one-line type for anything else. */
function Fields({ schema }: { schema: Schema }) {
  if (schema.properties) {
    const required = new Set(schema.required ?? []);
    return (
      <table class="fields">
        <tbody>
          {Object.entries(schema.properties).map(([name, field]) => (
            <tr>
              <th scope="row">
                <code>{name}</code>
                {required.has(name) ? "" : "?"}
              </th>
              <td>
                <code>
                  <TypeOf schema={field} />
                </code>
              </td>
              <td>{field.description}</td>
            </tr>
          ))}
        </tbody>
      </table>
    );
  }
  const union = schema.oneOf ?? schema.anyOf;
  if (union && union.some((s) => s.properties))
    return (
      <ul class="variants">
        {union.map((s) => (
          <li>
            {s.description && <p>{s.description}</p>}
            <Fields schema={s} />
          </li>
        ))}
      </ul>
    );
  return (
    <p>
      <code>
        <TypeOf schema={schema} />
      </code>
      {schema.pattern && (
        <>
          {" "}
          matching <code>{schema.pattern}</code>
        </>
      )}
    </p>
  );
}

function Bodies({ content }: { content?: Content }) {
  if (!content) return null;
  return (
    <ul class="bodies">
      {Object.entries(content).map(([type, { schema }]) => (
        <li>
          <code>{type}</code>: <TypeOf schema={schema} />
        </li>
      ))}
    </ul>
  );
}

function OperationView({ method, path, op }: { method: string; path: string; op: Operation }) {
  return (
    <details class="operation" id={`${method}-${path}`}>
      <summary>
        <span class={`method ${method}`}>{method.toUpperCase()}</span> <code>{path}</code> <span class="muted">{op.summary}</span>
      </summary>
      {op.description?.split("\n\n").map((p) => <p>{p}</p>)}
      {op.parameters && op.parameters.length > 0 && (
        <>
          <h4>Parameters</h4>
          <table class="fields">
            <tbody>
              {op.parameters.map((p) => (
                <tr>
                  <th scope="row">
                    <code>{p.name}</code>
                    {p.required ? "" : "?"}
                  </th>
                  <td>{p.in}</td>
                  <td>
                    <code>
                      <TypeOf schema={p.schema} />
                    </code>
                  </td>
                  <td>{p.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {op.requestBody && (
        <>
          <h4>Body</h4>
          {op.requestBody.description && <p>{op.requestBody.description}</p>}
          <Bodies content={op.requestBody.content} />
        </>
      )}
      <h4>Answers</h4>
      <table class="fields">
        <tbody>
          {Object.entries(op.responses).map(([code, r]) => (
            <tr>
              <th scope="row">{code}</th>
              <td>{r.description}</td>
              <td>
                <Bodies content={r.content} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </details>
  );
}

export function ApiDocs() {
  const loc = useLocation();
  const filter = loc.params.get("q") ?? "";
  const [doc, setDoc] = useState<Document | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    fetch("/openapi.json")
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`the API document answered ${r.status}`))))
      .then(setDoc, setError);
  }, []);
  const groups = useMemo(() => {
    const byTag = new Map<string, [string, string, Operation][]>();
    if (!doc) return byTag;
    const needle = filter.toLowerCase();
    for (const [path, item] of Object.entries(doc.paths))
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const text = `${method} ${path} ${op.summary ?? ""} ${op.description ?? ""}`.toLowerCase();
        if (needle && !text.includes(needle)) continue;
        const tag = op.tags?.[0] ?? "other";
        byTag.set(tag, [...(byTag.get(tag) ?? []), [method, path, op]]);
      }
    return byTag;
  }, [doc, filter]);
  useEffect(() => {
    // Opened at an address with a fragment (a shared link to a schema or an operation).
    if (doc && location.hash) {
      const id = decodeURIComponent(location.hash.slice(1));
      reveal(id);
      document.getElementById(id)?.scrollIntoView();
    }
  }, [doc]);
  if (error) return <Failure error={error} />;
  if (!doc) return <p aria-busy="true">Loading the API document…</p>;
  const schemas = Object.entries(doc.components?.schemas ?? {}).sort(([a], [b]) => a.localeCompare(b));
  return (
    <section class="api-docs">
      <h1>
        {doc.info.title} <span class="muted">{doc.info.version}</span>
      </h1>
      {doc.info.description?.split("\n\n").map((p) => <p>{p}</p>)}
      <p>
        The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).
      </p>
      <div class="filters">
        <TextFilter label="Find" name="q" value={filter} placeholder="path, method or word" type="search" onCommit={(v) => setParam({ q: v })} />
      </div>
      {[...groups.entries()].map(([tag, ops]) => (
        <section>
          <h2>{tag}</h2>
          {ops.map(([method, path, op]) => (
            <OperationView method={method} path={path} op={op} />
          ))}
        </section>
      ))}
      {groups.size === 0 && <p>No operation matches “{filter}”.</p>}
      <h2>Schemas</h2>
      {schemas.map(([name, schema]) => (
        <details class="schema" id={`schema-${name}`}>
          <summary>
            <code>{name}</code> <span class="muted">{schema.description?.split("\n")[0]}</span>
          </summary>
          <Fields schema={schema} />
        </details>
      ))}
    </section>
  );
}
