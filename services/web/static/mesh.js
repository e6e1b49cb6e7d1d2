// The mesh's HTTP/JSON access, from a browser: calls (POST /<contract>/v<major>/<Method>) and
// streams (server-sent events read with fetch, which, unlike EventSource, sends the credential
// headers). Shared by the chat and the console.

/** A call the mesh refused or could not answer: its HTTP status and gRPC status name. */
export class MeshError extends Error {
  constructor(http, status, message, degraded) {
    super(`${status}: ${message}`);
    this.http = http;
    this.status = status;
    this.degraded = degraded;
  }
}

async function failure(response) {
  let status = `HTTP_${response.status}`;
  let message = response.statusText;
  try {
    const body = await response.json();
    status = body.error.status;
    message = body.error.message;
  } catch (_) {
    // not the mesh's JSON error (a proxy's page): the HTTP status says enough
  }
  return new MeshError(response.status, status, message, response.headers.get("x-mesh-degraded"));
}

/**
 * Calls `path` with `body`; resolves to `{ json, degraded }` where `degraded` names the switch
 * that answered (null when the call was served).
 */
export async function call(path, body, headers) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body ?? {}),
  });
  if (!response.ok) throw await failure(response);
  return { json: await response.json(), degraded: response.headers.get("x-mesh-degraded") };
}

/**
 * Opens the stream at `path`; `onOpen` runs once the mesh accepted it, `onMessage` for each
 * message. Resolves when the stream ends, rejects with a MeshError on its error event or when
 * it is refused. Abort it with `signal`.
 */
export async function stream(path, body, headers, { onOpen, onMessage, signal }) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body ?? {}),
    signal,
  });
  if (!response.ok) throw await failure(response);
  onOpen?.();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new MeshError(0, "UNAVAILABLE", "the stream was cut", null);
    buffered += value;
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const block = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue; // a keepalive comment
      const json = JSON.parse(data);
      if (name === "message") onMessage(json);
      else if (name === "end") return;
      else if (name === "error") {
        throw new MeshError(json.error.code, json.error.status, json.error.message, null);
      }
    }
  }
}

/** A text node: what users typed is shown as text, never read as markup. */
export function text(value) {
  return document.createTextNode(String(value ?? ""));
}

/** An element with a class and children. */
export function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    node.append(typeof child === "string" ? text(child) : child);
  }
  return node;
}
