// Test inputs shared by the data tests.

/** The bytes of an idx file of unsigned bytes (type 0x08) with this shape and these values. */
export function idxFile(shape: number[], values: ArrayLike<number>): Buffer {
  const header = Buffer.alloc(4 + 4 * shape.length);
  header.writeUInt8(0x08, 2);
  header.writeUInt8(shape.length, 3);
  shape.forEach((d, i) => {
    header.writeUInt32BE(d, 4 + 4 * i);
  });
  return Buffer.concat([header, Buffer.from(Uint8Array.from(values))]);
}
