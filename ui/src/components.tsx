import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";
import { navigate } from "./router";

export function Link(props: { href: string; class?: string; children: preact.ComponentChildren; "aria-current"?: "page" }) {
  return (
    <a
      {...props}
      onClick={(e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
        e.preventDefault();
        navigate(props.href);
      }}
    />
  );
}

/** What a page shows when its data could not be had. */
export function Failure({ error }: { error: unknown }) {
  if (!error) return null;
  const text = error instanceof ApiError ? error.detail : String(error);
  return (
    <p class="error" role="alert">
      {text}
    </p>
  );
}


/**
 * A text filter that keeps what is being typed (a re-render from a poll or a live event does not
 * reset it) and hands it on after a pause in typing, on Enter, or when the field is left.
 */
export function TextFilter(props: { label: string; name: string; value: string; placeholder?: string; type?: string; onCommit: (value: string) => void }) {
  const [text, setText] = useState(props.value);
  const committed = useRef(props.value);
  useEffect(() => {
    committed.current = props.value;
    setText(props.value);
  }, [props.value]);
  const commit = (v: string) => {
    const value = v.trim();
    if (value !== committed.current) {
      committed.current = value;
      props.onCommit(value);
    }
  };
  useEffect(() => {
    const t = setTimeout(() => commit(text), 400);
    return () => clearTimeout(t);
  }, [text]);
  return (
    <label>
      {props.label}
      <input
        type={props.type ?? "text"}
        name={props.name}
        placeholder={props.placeholder}
        value={text}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => e.key === "Enter" && commit(e.currentTarget.value)}
        onBlur={(e) => commit(e.currentTarget.value)}
      />
    </label>
  );
}
