// The progress display: on a terminal, a status line (step n of N, elapsed, estimated time
// left, what runs now) above which each finished step prints one line; elsewhere (CI), plain
// lines only.

const fmt = (seconds) => {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
};

export class Progress {
  #total;
  #done = 0;
  #plannedLeft;
  #started = Date.now();
  #current = null;
  #tty = Boolean(process.stderr.isTTY);
  #timer = null;

  /** `plannedSeconds`: the estimated duration of all the steps together. */
  constructor(totalSteps, plannedSeconds) {
    this.#total = totalSteps;
    this.#plannedLeft = plannedSeconds;
    if (this.#tty) {
      this.#timer = setInterval(() => this.#draw(), 500);
      this.#timer.unref();
    }
  }

  get elapsed() {
    return (Date.now() - this.#started) / 1000;
  }

  #status() {
    const left = this.#current
      ? this.#plannedLeft - Math.min(this.#current.estimate, (Date.now() - this.#current.at) / 1000)
      : this.#plannedLeft;
    const step = `${Math.min(this.#done + 1, this.#total)}/${this.#total}`;
    return `[${step.padStart(7)}] ${fmt(this.elapsed)} elapsed, ~${fmt(left)} left  ${this.#current?.label ?? ''}`;
  }

  #draw() {
    if (!this.#tty) return;
    const columns = process.stderr.columns || 100;
    process.stderr.write(`\r\x1b[K${this.#status().slice(0, columns - 1)}`);
  }

  /** A line of its own (above the status line on a terminal). */
  log(text) {
    if (this.#tty) process.stderr.write(`\r\x1b[K${text}\n`);
    else process.stderr.write(`${text}\n`);
    this.#draw();
  }

  begin(label, estimate) {
    this.#current = { label, estimate, at: Date.now() };
    this.#draw();
  }

  /** Ends the current step with a one-line outcome. */
  end(outcome) {
    const current = this.#current;
    if (!current) return;
    this.#done++;
    this.#plannedLeft = Math.max(0, this.#plannedLeft - current.estimate);
    this.#current = null;
    const seconds = ((Date.now() - current.at) / 1000).toFixed(1);
    const step = `${this.#done}/${this.#total}`.padStart(7);
    this.log(`[${step}] ${fmt(this.elapsed)} ${current.label}: ${outcome} (${seconds} s)`);
  }

  finish() {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#tty) process.stderr.write('\r\x1b[K');
  }
}
