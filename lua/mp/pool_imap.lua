--[[
The iterator imap and imap_unordered return (lua/mp/pool.lua). Its job (a
stream job) gets its results chunk by chunk: the transport fills job.dest at
each chunk's offset and marks the chunk settled (job.chunk_of[offset]); this
iterator hands out the items of settled chunks, in order (job.order) or as
they settle (job.ready_list), frees what it handed out, and lets the pool
send more chunks as the window (job.window chunks sent and not consumed)
frees up. A nil result ends a generic `for` early, as with any Lua iterator.
]]

-- iterator(pool, job, feed) --> the iterator; feed(pool) sends what the window allows.
return function(pool, job, feed)
  local ordered = job.ordered
  local chunk, pos, ci = nil, 0, 1
  local function has_next()
    if ordered then local c = job.order[ci]; return c ~= nil and c.settled end
    return #job.ready_list > 0
  end
  local function finished() return job.finished and not has_next() end
  return function()
    while true do
      if chunk ~= nil then
        if pos < chunk.count then
          pos = pos + 1
          local i = chunk.off + pos
          local v = job.dest[i]
          job.dest[i] = nil
          if job.draw then job.items_consumed = job.items_consumed + 1; job.draw() end
          return v
        end
        chunk = nil
        job.consumed = job.consumed + 1
        -- Refill when half the window is free: tasks then leave in batches.
        if 2 * (job.chunks_sent - job.consumed) <= job.window then feed(pool) end
      end
      if not has_next() then
        if finished() then
          if job.draw then job.draw(true); job.draw = nil end
          if job.error ~= nil and not job.raised then job.raised = true; error(job.error, 2) end
          return nil
        end
        pool:_wait(function() return has_next() or job.finished end)
      end
      if has_next() then
        local c
        if ordered then c = job.order[ci]; job.order[ci] = nil; ci = ci + 1
        else c = table.remove(job.ready_list, 1) end
        job.chunk_of[c.off] = nil
        if c.err ~= nil then
          job.consumed = job.consumed + 1
          job.raised = true
          error(c.err, 2)
        end
        chunk, pos = c, 0
      end
    end
  end
end
