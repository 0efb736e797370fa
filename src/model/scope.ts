// Scopes narrower than a whole training pass. A pass that runs in one tf.tidy holds every
// temporary of every layer until it ends: for ViT-Ti/16 at 224 px that is ~350 MB per image, so
// micro-batch 16 needed more than the 4 GiB a wasm32 heap can address (issue 19). Running each
// block in its own scope keeps only what its backward pass needs.

import * as tf from '@tensorflow/tfjs-core';

/** Every tensor reachable from `value` through arrays, plain objects and Map values. */
export function tensorsIn(value: unknown, found: tf.Tensor[] = []): tf.Tensor[] {
  if (value instanceof tf.Tensor) found.push(value);
  else if (value instanceof Map) for (const v of value.values()) tensorsIn(v, found);
  else if (Array.isArray(value)) for (const v of value) tensorsIn(v, found);
  else if (value !== null && typeof value === 'object') for (const v of Object.values(value)) tensorsIn(v, found);
  return found;
}

/**
 * fn() inside tf.tidy: the tensors it creates are freed when it returns, except those reachable
 * from its result (tf.tidy itself does not look inside Maps or typed objects with optional fields).
 */
export function tidyKeeping<T>(fn: () => T): T {
  let result!: T;
  tf.tidy(() => {
    result = fn();
    return tensorsIn(result);
  });
  return result;
}
