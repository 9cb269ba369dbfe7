-- wrk script for benchmarks/serve.py: POST /v1/predict with real slices; print JSON at the end.
-- usage: wrk -t1 -cC -d3600s -s serve_load.lua URL -- BODY_DIR N_BODIES N_REQUESTS
-- BODY_DIR holds b0.bin .. b{N_BODIES-1}.bin, each a whole multipart body with the boundary below.
-- After N_REQUESTS answers the thread stops and "answered N" goes to stderr: wrk itself only ends at -d or on
-- SIGINT, so serve.py sends SIGINT when it reads that line (wrk then prints its summary through done()).
local bodies, limit, answered = {}, 0, 0
local content_type = "multipart/form-data; boundary=lungctbenchboundary"

function init(args)
  local dir, n = args[1], tonumber(args[2])
  limit = tonumber(args[3])
  for i = 0, n - 1 do
    local f = assert(io.open(dir .. "/b" .. i .. ".bin", "rb"))
    bodies[i + 1] = f:read("*all")
    f:close()
  end
end

local sent = 0
function request()
  sent = sent + 1
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = content_type}, bodies[(sent % #bodies) + 1])
end

function response(status, headers, body)
  answered = answered + 1
  if answered == limit then
    io.stderr:write("answered " .. answered .. "\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "non_2xx_or_socket_errors": %d, "latency_us": ' ..
    '{"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
