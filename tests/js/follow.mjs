// A real WHATWG EventSource (the npm `eventsource` package) following a Quaero stream, for
// tests/test_eventsource_node.py. Prints one JSON object per line: what it saw and did.
//   node follow.mjs URL [--ignore-end]
import { EventSource } from "eventsource";

const url = process.argv[2];
const ignoreEnd = process.argv.includes("--ignore-end");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const es = new EventSource(url);
let opens = 0;
// the package unref()s its reconnect timer: without this, node would exit while it waits
setInterval(() => {}, 1 << 30);

es.onopen = () => out({ open: ++opens });
es.onerror = () => {
  out({ error: true, readyState: es.readyState });
  if (es.readyState === EventSource.CLOSED) {
    out({ gaveUp: true });
    process.exit(0);
  }
};
es.addEventListener("logs", (e) => {
  const data = JSON.parse(e.data);
  out({ logs: data.logs.map((l) => l.id), lastEventId: e.lastEventId });
});
es.addEventListener("end", () => {
  out({ end: true });
  if (!ignoreEnd) {
    es.close();
    process.exit(0);
  }
});
