// Cleanup on every exit path. Whatever the suite creates outside its own memory (child
// processes, network namespaces, links, firewall chains, sysctl values) registers a
// synchronous undo step here; the steps run in reverse order on normal exit, on an error,
// on SIGINT/SIGTERM/SIGHUP and on an uncaught exception, each at most once.

const steps = [];
let installed = false;

const persistent = [];

/** Registers an undo step; returns a function that runs it now (and unregisters it). */
export function onCleanup(fn, label = 'cleanup') {
  const step = { fn, label, done: false };
  steps.push(step);
  return () => runStep(step);
}

/** Registers a step that runs first at every cleanup and stays registered (killing children). */
export function onEveryCleanup(fn, label = 'cleanup') {
  persistent.push({ fn, label });
}

function runStep(step) {
  if (step.done) return;
  step.done = true;
  const index = steps.indexOf(step);
  if (index >= 0) steps.splice(index, 1);
  try {
    step.fn();
  } catch (error) {
    process.stderr.write(`bench: cleanup step "${step.label}" failed: ${error.message}\n`);
  }
}

/** Runs the persistent steps, then every registered step, newest first. */
export function cleanupAll() {
  for (const step of persistent) {
    try {
      step.fn();
    } catch (error) {
      process.stderr.write(`bench: cleanup step "${step.label}" failed: ${error.message}\n`);
    }
  }
  while (steps.length > 0) runStep(steps[steps.length - 1]);
}

/** Installs the signal and exception handlers (once). */
export function installCleanupHandlers() {
  if (installed) return;
  installed = true;
  const signals = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 };
  for (const [signal, number] of Object.entries(signals)) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, cleaning up\n`);
      cleanupAll();
      process.exit(128 + number);
    });
  }
  const fatal = (error) => {
    process.stderr.write(`\nbench: ${error?.stack ?? error}\n`);
    cleanupAll();
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  process.on('exit', cleanupAll);
}
