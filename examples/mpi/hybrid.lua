--[[
Hybrid: one MPI rank per machine, a local mp.Pool per core inside each rank.

  mpirun --map-by ppr:1:node -H a,b,c mplua examples/mpi/hybrid.lua [n]
  mpirun --oversubscribe -n 3 mplua examples/mpi/hybrid.lua   (one machine)

Each worker rank builds its local pool once, in the initializer (a global of
that rank: the tasks' _ENV is the worker's globals), and each task (a block
of numbers) is spread over that rank's cores.
]]
local mpi = require "mp.mpi"

local function local_pool()
  LOCAL = mp.Pool(mp.cpu_count())          -- on the worker rank, before its first task
end

local pool <close> = mpi.Pool{ initializer = local_pool }
local n = tonumber(arg and arg[1]) or 200000
local blocks = {}
for b = 1, 8 do blocks[b] = { from = (b - 1) * n // 8 + 1, to = b * n // 8 } end

local sums = pool:map(function(block)
  local xs = {}
  for i = block.from, block.to do xs[#xs + 1] = i end
  local s = 0
  for _, v in ipairs(LOCAL:map(function(x) return math.sin(x) ^ 2 + math.cos(x) ^ 2 end, xs)) do s = s + v end
  return { sum = s, rank = require("mp.mpi").rank, cores = mp.cpu_count() }
end, blocks, 1)

local total, ranks = 0, {}
for _, r in ipairs(sums) do total = total + r.sum; ranks[r.rank] = r.cores end
for rank, cores in pairs(ranks) do print(string.format("rank %d used a local pool of %d", rank, cores)) end
print(string.format("sum of sin^2 + cos^2 over %d numbers: %.0f", n, total))
pool:close()
pool:join()
