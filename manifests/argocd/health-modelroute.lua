-- Argo CD health of a tokenomy.dev ModelRoute, from the conditions the operator writes.
-- Progressing until the operator has seen this generation; Degraded when the spec is
-- invalid or a backend's Service has no ready endpoint.
local function health(status, message)
  return {status = status, message = message}
end
if obj.status == nil or obj.status.conditions == nil then
  return health("Progressing", "Waiting for the Tokenomy operator to reconcile the route")
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  return health("Progressing", "The operator has not yet reconciled generation " .. generation)
end
for _, c in ipairs(obj.status.conditions) do
  if c.status == "False" then return health("Degraded", c.message) end
end
return health("Healthy", "Valid, every backend resolved")
