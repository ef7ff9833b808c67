-- Argo CD health of a tokenomy.dev CostPolicy, from the conditions the operator writes.
-- Progressing until the operator has seen this generation and every selected sidecar
-- runs its config; Degraded when the spec does not compile (the last good config stays
-- in force), a sidecar rejected the config, or selected pods run without a sidecar.
local hs = {}
local function find(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then return c end
  end
  return nil
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tokenomy operator to reconcile the policy"
  return hs
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet reconciled generation " .. generation
  return hs
end
local ready = find(obj.status.conditions, "Ready")
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message
  return hs
end
local applied = find(obj.status.conditions, "Applied")
if applied ~= nil and applied.status == "False" then
  if applied.reason == "Rejected" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = applied.message
  return hs
end
local injected = find(obj.status.conditions, "SidecarsInjected")
if injected ~= nil and injected.status == "False" then
  hs.status = "Degraded"
  hs.message = injected.message
  return hs
end
hs.status = "Healthy"
hs.message = applied and applied.message or "Reconciled"
return hs
