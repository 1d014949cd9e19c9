-- Prints the latency percentiles bench/run.sh records (µs), one per line.
done = function(summary, latency, requests)
  for _, p in ipairs({50, 99, 99.9}) do
    io.write(string.format("pct %s %d\n", p, latency:percentile(p)))
  end
end
