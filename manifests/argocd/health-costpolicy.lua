-- Argo CD health of a tokenomy.dev CostPolicy, from the conditions the operator writes.
-- Progressing until the operator has seen this generation and every selected sidecar
-- runs its config; Degraded when the spec does not compile (the last good config stays
-- in force), a sidecar rejected the config, or selected pods run without a sidecar.
local function health(status, message)
  return {status = status, message = message}
end
local function failing(kind)
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind and c.status == "False" then return c end
  end
  return nil
end
if obj.status == nil or obj.status.conditions == nil then
  return health("Progressing", "Waiting for the Tokenomy operator to reconcile the policy")
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  return health("Progressing", "The operator has not yet reconciled generation " .. generation)
end
local ready = failing("Ready")
if ready ~= nil then return health("Degraded", ready.message) end
local applied = failing("Applied")
if applied ~= nil then
  return health(applied.reason == "Rejected" and "Degraded" or "Progressing", applied.message)
end
local injected = failing("SidecarsInjected")
if injected ~= nil then return health("Degraded", injected.message) end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Applied" then return health("Healthy", c.message) end
end
return health("Healthy", "Reconciled")
