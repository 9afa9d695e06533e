// A Server-Sent Events parser over a fetch() body. EventSource cannot POST or send an
// Authorization header, so the page reads the stream itself, following the WHATWG rules:
// lines end in LF, CR or CRLF; `:` starts a comment; `data` lines join with LF; a blank line
// dispatches; an event cut off by the end of the stream is dropped.

/**
 * Yield `{event, data, id}` for each event of a `ReadableStream<Uint8Array>`.
 * Comments (keep-alives) are yielded as `{comment}` so a caller can show liveness.
 */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (;;) {
        const end = /\r\n|\r|\n/.exec(buffer);
        // A lone CR at the end may be the first half of a CRLF still on its way.
        if (!end || (end[0] === "\r" && end.index === buffer.length - 1)) break;
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
        } else if (line.startsWith(":")) {
          yield { comment: line.slice(1).trim() };
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
          else if (field === "id") id = value;
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}
