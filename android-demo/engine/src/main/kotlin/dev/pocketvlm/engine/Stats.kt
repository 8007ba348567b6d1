package dev.pocketvlm.engine

/**
 * Summary statistics over benchmark runs, computed as the Python bench computes them (`runtime/bench.py`), so a
 * device file and a host file mean the same thing: the median is the middle value (the mean of the two middle ones
 * for an even count, as `statistics.median`), a percentile interpolates linearly between the closest ranks (numpy's
 * default `np.percentile`).
 */
object Stats {
    fun median(values: DoubleArray): Double = percentile(values, 50.0)

    fun mean(values: DoubleArray): Double {
        requireValues(values)
        return values.sum() / values.size
    }

    fun min(values: DoubleArray): Double {
        requireValues(values)
        return values.minOrNull()!!
    }

    fun p90(values: DoubleArray): Double = percentile(values, 90.0)

    fun p10(values: DoubleArray): Double = percentile(values, 10.0)

    /** The [q]th percentile (0..100), linear between closest ranks: rank q/100 x (n - 1). */
    fun percentile(values: DoubleArray, q: Double): Double {
        requireValues(values)
        if (q.isNaN() || q < 0.0 || q > 100.0) throw InputError("percentile $q is outside 0..100", "pass 0 to 100")
        val sorted = values.sortedArray()
        val rank = q / 100.0 * (sorted.size - 1)
        val lo = Math.floor(rank).toInt()
        val hi = Math.ceil(rank).toInt()
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo)
    }

    /** Median, p90, min, mean and the count, in the units of [values] (the bench schema's `components` entry). */
    fun summary(values: DoubleArray): Summary =
        Summary(median(values), p90(values), min(values), mean(values), values.size)

    private fun requireValues(values: DoubleArray) {
        if (values.isEmpty()) throw InputError("no measurements to summarise", "run the benchmark at least once")
        val bad = values.firstOrNull { it.isNaN() || it.isInfinite() }
        if (bad != null) throw InputError("a measurement is $bad", "measure with a monotonic clock (System.nanoTime)")
    }
}

/** One measured quantity over runs. */
class Summary(val median: Double, val p90: Double, val min: Double, val mean: Double, val runs: Int) {
    /** The bench schema's per-component latency entry (values in milliseconds). */
    fun componentEntry(): Map<String, Any> =
        linkedMapOf("median_ms" to median, "p90_ms" to p90, "min_ms" to min, "runs" to runs)
}
