// What the two processes of the soak test share: the IPC messages between them, and the wire
// format the load's clients and target servers speak through the proxy.
//
// IPC, the process under test (soak.mjs) to the load (load.mjs): `mappings` (the list to
// drive: id, proto, host, port, churn), `retire` (an id to start nothing new on; answered
// `retired:<id>`), `start`, `stop` (answered `done` with the totals once the lanes are idle),
// `exit`. The load to the process under test: `ready` (its servers' ports), `stats` (its
// totals, every second), `error` (a text: a violation seen by the load).

export const MiB = 1024 * 1024;

// Modes of a TCP connection, shared by the clients and the target servers.
export const MODE = {
  echo: 1, // The target echoes; the client half-closes after sending.
  bulk: 2, // Both send `down`/`up` bytes at once, each half-closes when done.
  halfCloseClient: 3, // The client sends and half-closes; then the target answers and ends.
  halfCloseServer: 4, // The target sends and half-closes first; then the client sends.
  resetByClient: 5, // The client sends, and resets after the target's one-byte acknowledgement.
  resetByServer: 6, // Both send; the target resets once the client has acknowledged its bytes.
  resetInFlight: 7, // The client sends; the target sends and resets at once, bytes in flight.
  trickle: 8, // Echo, with small writes spaced out over seconds.
};
// A reset that reaches a Node socket in the same wakeup as data is reported as a clean end:
// libuv's uv__stream_io() takes POLLHUP after a partial read for EOF without reading the
// error (with or without a proxy in between; a Python client sees ECONNRESET). So the strict
// modes make the reset arrive alone (after an acknowledgement of every byte), and a clean end
// in resetInFlight is accepted only if a write on the still open half then fails: the
// connection was reset, not half-closed.
export const MODE_NAMES = Object.fromEntries(Object.entries(MODE).map(([k, v]) => [v, k]));
export const HEADER_SIZE = 28; // magic u32, connection id u32, mode u8, 3 spare, down u64, up u64.
export const TCP_MAGIC = 0x534f414b; // "SOAK"
export const UDP_MAGIC = 0x55445053; // "UDPS"
export const UDP_HEADER_SIZE = 16 + 32; // magic, flow, seq, length, then sha256 of the payload.

/** Resolves `value` after `ms`, without keeping the process alive (for races with a deadline). */
export function timeLimit(ms, value) {
  return new Promise((resolve) => setTimeout(resolve, ms, value).unref());
}
