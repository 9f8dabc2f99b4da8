/**
 * The measure docs/numerics.md holds logits to: per row, max|got - ref| / std(ref), where std is the reference
 * row's standard deviation over the vocab.
 */

/**
 * The worst row of `batch` rows of `vocab` logits.
 * @param {Float32Array} got @param {Float32Array} ref @param {number} vocab
 * @returns {number}
 */
export function stdDeviation(got, ref, vocab) {
  if (got.length !== ref.length) throw new Error(`logits length ${got.length}, expected ${ref.length}`);
  let worst = 0;
  for (let row = 0; row * vocab < ref.length; row++) {
    const r = ref.subarray(row * vocab, (row + 1) * vocab);
    const g = got.subarray(row * vocab, (row + 1) * vocab);
    let mean = 0;
    for (const x of r) mean += x;
    mean /= vocab;
    let square = 0;
    let diff = 0;
    for (let i = 0; i < vocab; i++) {
      square += (r[i] - mean) ** 2;
      const d = Math.abs(g[i] - r[i]);
      diff = d > diff || Number.isNaN(d) ? d : diff; // a NaN is the worst deviation there is
    }
    const value = diff / Math.sqrt(square / vocab);
    worst = value > worst || Number.isNaN(value) ? value : worst;
  }
  return worst;
}

/**
 * Step by step: the worst step's deviation and its index, over `steps` blocks of `batch * vocab`.
 * @param {Float32Array[]} gotSteps @param {Float32Array} ref @param {number} vocab
 */
export function worstStep(gotSteps, ref, vocab) {
  const size = ref.length / gotSteps.length;
  let worst = { step: -1, deviation: 0 };
  gotSteps.forEach((got, step) => {
    const deviation = stdDeviation(got, ref.subarray(step * size, (step + 1) * size), vocab);
    if (!(deviation <= worst.deviation)) worst = { step, deviation };
  });
  return worst;
}
