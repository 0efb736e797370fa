/**
 * The three kinds of error that callers branch on, each with a stable code (as ws's errors carry one):
 *
 * - `InputError`: bad input (flags, a recipe, a data file, weights, a checkpoint). Nothing retries it;
 *   the message names the file, flag or key to fix.
 * - `FatalError`: the run cannot go on (a desync, a failed run, a worker that cannot take part with
 *   this recipe or data). No new generation can fix it.
 * - `RecoverableError`: a member or a link failed (a peer lost, a heartbeat missed, a frame broken).
 *   The coordinator forms a new generation from the last checkpoint.
 *
 * Wrapping keeps the wrapped error: pass `{ cause }`, never copy its message alone.
 */
export type ErrorKind = 'input' | 'fatal' | 'recoverable';

export abstract class VitDistError extends Error {
  abstract readonly kind: ErrorKind;
  constructor(
    /** A stable, upper-case identifier of the failure, e.g. `RECIPE_UNKNOWN_KEY`, `RING_HEARTBEAT`. */
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Bad input: the message names what to change. */
export class InputError extends VitDistError {
  override name = 'InputError';
  readonly kind = 'input';
}

/** The run cannot go on; no restart fixes it. */
export class FatalError extends VitDistError {
  override name = 'FatalError';
  readonly kind = 'fatal';
}

/** A member or link failed; a new generation from the last checkpoint recovers. */
export class RecoverableError extends VitDistError {
  override name = 'RecoverableError';
  readonly kind = 'recoverable';
}

/** The kind of any thrown value: ours carry theirs; anything else is treated as recoverable. */
export function errorKind(error: unknown): ErrorKind {
  return error instanceof VitDistError ? error.kind : 'recoverable';
}
