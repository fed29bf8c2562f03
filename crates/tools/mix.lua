-- The benchmark's request mix for wrk: about 60 % creates (repeats of an open key with the same owner,
-- owner changes, new customers), 25 % close won (half of them converting leads), 15 % close lost.
-- Records P000000000.. were preloaded open (even: NTB leads, odd: ETB opportunities, owner RM001). The lower
-- half of them is closed (each id once per thread stride, won and lost on disjoint ids, so no answer is an
-- INVALID_TRANSITION); the upper half receives the creates. KEYED (0-100, default 0) is the share of requests
-- sent with an Idempotency-Key of their own, as a channel that may retry sends them.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  preload = tonumber(os.getenv("PRELOAD") or "10000")
  nthreads = tonumber(os.getenv("THREADS") or "2")
  keyed = tonumber(os.getenv("KEYED") or "0")
  kw, kl = 0, 0
  math.randomseed(tid * 7919 + os.time())
  wrk.headers["Content-Type"] = "application/json"
end

local function id(i) return string.format("P%09d", i) end

-- A POST of `body`, with a fresh Idempotency-Key for KEYED % of them.
local function post(path, body)
  local headers = nil
  if keyed > 0 and math.random(100) <= keyed then
    headers = { ["Content-Type"] = "application/json",
                ["Idempotency-Key"] = string.format("bench-%d-%d-%d", tid, counter, os.time()) }
  end
  return wrk.format("POST", path, headers, body)
end

local function create(ctype, key, owner, cif)
  local body = string.format(
    '{"customerType":"%s","customer":{"idNumber":"%s","cif":%s,"fullName":"Bench Customer","phone":"+84901234567","email":"bench@example.com"},"product":"CARD","ownerId":"%s","channel":"BENCH","journeyId":"J%d"}',
    ctype, key, cif, owner, counter)
  return post("/integration-service/int/api/crm/v1/combo-create-lead-opportunity", body)
end

request = function()
  counter = counter + 1
  local half = math.floor(preload / 2)
  local r = math.random(100)
  if r <= 60 then
    local s = math.random(100)
    if s <= 45 then
      return create("NTB", string.format("N%d-%d-%d", tid, counter, os.time()), "RM001", "null")
    end
    local j = half + math.random(0, preload - half - 1)
    local owner = "RM001"
    if s > 80 then owner = string.format("RM00%d", math.random(2, 3)) end
    if j % 2 == 0 then
      return create("NTB", string.format("PK%09d", j), owner, "null")
    end
    return create("ETB", string.format("PK%09d", j), owner, '"CIF1"')
  elseif r <= 85 then
    local block = tid + nthreads * kw
    if 4 * block + 1 >= half then kw = 0; block = tid end
    kw = kw + 1
    if kw % 2 == 0 then
      return post("/integration-service/int/api/crm/v1/combo-update-lead-opportunity",
        string.format('{"leadId":"%s","channel":"BENCH","convertToOpportunity":true}', id(4 * block)))
    end
    return post("/integration-service/int/api/crm/v1/combo-update-lead-opportunity",
      string.format('{"opportunityId":"%s","channel":"BENCH"}', id(4 * block + 1)))
  else
    local block = tid + nthreads * kl
    if 4 * block + 3 >= half then kl = 0; block = tid end
    kl = kl + 1
    if kl % 2 == 0 then
      return post("/integration-service/api/crm/v1/update-lead-status",
        string.format('{"leadId":"%s","status":"Close Lost","channel":"BENCH","reason":"NCB_REJECTED"}', id(4 * block + 2)))
    end
    return post("/integration-service/api/crm/v1/update-opportunity-status",
      string.format('{"opportunityId":"%s","status":"Close Lost","channel":"BENCH","reason":"AML_REJECTED"}', id(4 * block + 3)))
  end
end
