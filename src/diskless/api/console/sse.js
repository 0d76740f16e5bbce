// Server-sent events over fetch. EventSource cannot send an Authorization header, so the
// console reads GET /events as a byte stream and parses the SSE frames itself (the subset of
// the WHATWG "event stream" format the server writes: event, data, id, retry and comments).

/** Parses SSE text fed in arbitrary chunks; calls onFrame({event, data, id}) per frame. */
export class SseParser {
  constructor(onFrame, onComment = () => {}) {
    this.onFrame = onFrame;
    this.onComment = onComment;
    this.buffer = "";
    this.retry = null;
    this.pendingCR = false;
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  feed(text) {
    // A CRLF split between two chunks: the CR ended the line, so the LF is not a blank line.
    if (this.pendingCR && text.startsWith("\n")) text = text.slice(1);
    this.pendingCR = text.endsWith("\r");
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    // The last piece has no line end yet: keep it for the next chunk.
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0) {
        this.onFrame({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) {
      this.onComment(line.slice(1).trim());
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/**
 * Follows an SSE URL until signal aborts, reconnecting with exponential backoff (1 s to 30 s,
 * with jitter, so a restarted server is not hit by every console at once).
 * handlers: onFrame(frame), onOpen() once subscribed, onState("connecting" | "live" |
 * "reconnecting" | "unauthorized"). A 401 stops following: the token is wrong.
 */
export async function follow(url, token, handlers, signal) {
  let delay = 1000;
  while (!signal.aborted) {
    handlers.onState("connecting");
    try {
      const response = await fetch(url, {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal,
      });
      if (response.status === 401) {
        handlers.onState("unauthorized");
        return;
      }
      if (!response.ok || response.body === null) throw new Error(`HTTP ${response.status}`);
      const parser = new SseParser(handlers.onFrame, (comment) => {
        // The server's first comment: from here on no event is missed, so load the state now.
        if (comment === "subscribed") {
          delay = 1000;
          handlers.onState("live");
          handlers.onOpen();
        }
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    handlers.onState("reconnecting");
    await sleep(delay * (0.75 + Math.random() / 2), signal);
    delay = Math.min(delay * 2, 30000);
  }
}
