/**
 * How a flat buffer is cut up for the ring: N contiguous shards (one per rank), each cut into
 * chunks that travel as one data frame each.
 */

export interface ElementRange {
  /** First element, inclusive. */
  start: number;
  /** One past the last element. */
  end: number;
}

function assertCount(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
}

/**
 * The element range of shard `rank` when `length` elements are split over `worldSize` ranks:
 * contiguous and balanced, the first `length % worldSize` shards get one extra element.
 * Shards may be empty when length < worldSize.
 */
export function shardRange(length: number, worldSize: number, rank: number): ElementRange {
  assertCount('length', length, 0);
  assertCount('worldSize', worldSize, 1);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize) {
    throw new RangeError(`rank must be an integer in [0, ${worldSize}), got ${rank}`);
  }
  const base = Math.floor(length / worldSize);
  const extra = length % worldSize;
  const start = rank * base + Math.min(rank, extra);
  const end = start + base + (rank < extra ? 1 : 0);
  return { start, end };
}

/**
 * Cuts [range.start, range.end) into the fewest consecutive chunks of at most `chunkElements`
 * elements, of near-equal sizes (they differ by at most one element): a shard of 1.2 chunks
 * travels as two frames of 0.6, not as a full one and a runt, so the next hop's forwarding starts
 * halfway through. An empty range has no chunks (nothing is sent for it).
 */
export function chunkRanges(range: ElementRange, chunkElements: number): ElementRange[] {
  assertCount('chunkElements', chunkElements, 1);
  const length = range.end - range.start;
  const count = Math.ceil(length / chunkElements);
  return Array.from({ length: count }, (_, chunk) => {
    const part = shardRange(length, count, chunk);
    return { start: range.start + part.start, end: range.start + part.end };
  });
}
