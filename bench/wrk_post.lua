-- wrk script: POST one job per request and print a JSON summary line at the end.
-- The body comes from BENCH_BODY (bench/accept.py sets it), defaulting to an echo job.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"task": "app.tasks.example.echo", "payload": {"message": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
-- Conveyor's API needs a key (bench/accept.py makes one with the enqueue scope); peers ignore it.
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
