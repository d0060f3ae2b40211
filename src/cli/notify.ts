/**
 * The systemd notify protocol (sd_notify(3)) for `Type=notify` services: newline-separated
 * VARIABLE=VALUE assignments (READY=1, RELOADING=1, STOPPING=1, STATUS=...) sent as one
 * datagram to the AF_UNIX socket named by $NOTIFY_SOCKET.
 *
 * Node has no AF_UNIX datagram sockets (dgram is UDP only, net is stream only) and the addon's
 * native code is not the place for it, so the datagram is sent by systemd's own
 * `systemd-notify`, which is installed wherever systemd is, handles abstract socket names
 * (`@...`) and credentials, and (systemd 246 and later) waits until the manager has processed
 * the message, so that its short life does not hide which unit it came from. Because the
 * sender is a child process, the unit needs `NotifyAccess=all` (contrib/systemd/portsplice.service
 * has it). Messages go out one at a time, in order, each bounded in time.
 */
import { execFile } from 'node:child_process';

/** How long one systemd-notify may take (it waits for the manager's barrier). */
const SEND_TIMEOUT_MS = 5000;
/** STATUS-only updates are dropped rather than queued beyond this many pending messages. */
const MAX_PENDING = 8;

export type Assignments = Record<string, string | number>;

/** Formats assignments as sd_notify(3) takes them; a value cannot span lines. */
function formatAssignments(assignments: Assignments): string[] {
  return Object.entries(assignments).map(
    ([key, value]) => `${key}=${String(value).replace(/[\r\n]+/g, ' ')}`,
  );
}

/** CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC (libuv's hrtime). */
function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

export class SystemdNotifier {
  readonly #socket: string | undefined;
  readonly #command: string;
  readonly #onError: (message: string) => void;
  #chain: Promise<void> = Promise.resolve();
  #pending = 0;
  #failed = false;

  /**
   * `env` is where NOTIFY_SOCKET is read (process.env); `onError` hears about the first
   * failure only (a missing systemd-notify would otherwise be reported for every message).
   */
  constructor(
    onError: (message: string) => void,
    { env = process.env, command = 'systemd-notify' }: { env?: NodeJS.ProcessEnv; command?: string } = {},
  ) {
    this.#socket = env.NOTIFY_SOCKET || undefined;
    this.#command = command;
    this.#onError = onError;
  }

  /** Whether a service manager asked to be notified. */
  get enabled(): boolean {
    return this.#socket !== undefined;
  }

  ready(status: string): void {
    this.#send({ READY: 1, STATUS: status });
  }

  reloading(): void {
    this.#send({ RELOADING: 1, MONOTONIC_USEC: monotonicUsec().toString() });
  }

  stopping(status: string): void {
    this.#send({ STOPPING: 1, STATUS: status });
  }

  status(status: string): void {
    if (this.#pending >= MAX_PENDING) return;
    this.#send({ STATUS: status });
  }

  /** Resolves once every message given so far has been sent (or has failed). */
  flush(): Promise<void> {
    return this.#chain;
  }

  #send(assignments: Assignments): void {
    const socket = this.#socket;
    if (socket === undefined) return;
    const args = formatAssignments(assignments);
    this.#pending++;
    this.#chain = this.#chain.then(
      () =>
        new Promise<void>((resolve) => {
          execFile(
            this.#command,
            args,
            { env: { ...process.env, NOTIFY_SOCKET: socket }, timeout: SEND_TIMEOUT_MS, encoding: 'utf8' },
            (error, _stdout, stderr) => {
              this.#pending--;
              if (error && !this.#failed) {
                this.#failed = true;
                const why =
                  (error as NodeJS.ErrnoException).code === 'ENOENT'
                    ? `${this.#command} is not on PATH`
                    : stderr.trim() || error.message;
                this.#onError(`cannot notify the service manager on ${socket}: ${why}`);
              }
              resolve();
            },
          );
        }),
    );
  }
}
