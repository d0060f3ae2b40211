/** Where the CLI writes; `process.stdout`/`process.stderr` in real use. */
export interface Streams {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number; rows?: number };
  stderr: NodeJS.WritableStream;
  /** The live view's keys, when it is a terminal. */
  stdin?: NodeJS.ReadStream;
}
