/**
 * How gradient chunks travel in a reduce-scatter: float32, or bf16 (rounded to nearest even,
 * src/comm/bf16.ts) and added into float32 sums on receipt. Shared by the ring, the recipe's
 * `comm.wire` and the command line.
 */
export const WIRE_FORMATS = ['fp32', 'bf16'] as const;
export type WireFormat = (typeof WIRE_FORMATS)[number];
