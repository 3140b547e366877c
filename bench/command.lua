-- v1 command polls, each carrying a heartbeat from one of 100,000 hostnames.
local counter = 0
local offset = 0
function setup(thread)
  thread:set("offset", offset)
  offset = offset + 50000
end
function request()
  counter = counter + 1
  local h = (offset + counter) % 100000
  return wrk.format("GET", "/api/v1/command?hostname=host-" .. h, {["Authorization"] = "Token bench-license-key"})
end
