defmodule Snakepit.Pool.Process.Pinned do
  @moduledoc false
  # Jobs pinned to one worker of a :process pool: calls that pass a %Snakepit.Ref{} whose
  # object lives in that worker's table (Snakepit.Pool's submit_to/5; docs/architecture.md,
  # "Object references"). A pinned job runs on a free thread of its worker, else waits in the
  # worker's own queue (state.pinned), served before the pool's queue when a thread of the
  # worker frees. When the worker process is replaced (crash, kill, recycling) its waiting
  # pinned jobs fail with :worker, and a job pinned to a process that is already gone fails at
  # once: it never runs on another worker.

  alias Snakepit.Error
  alias Snakepit.Pool.Process, as: Pool

  @doc "A pinned request arrived at the pool process."
  def submit(state, tag, caller, body, kind, {{pool, index, os_pid}, keep}) do
    state = %{state | submitted: state.submitted + 1}

    # The guards of the refs the call passes: held while the job lives.
    job = Map.put(Pool.new_job(tag, caller, body, kind), :keep, keep)

    cond do
      pool != state.name ->
        refuse(
          state,
          tag,
          Error.new(
            :validation,
            "this Snakepit.Ref's object lives in pool #{inspect(pool)}, not " <>
              "#{inspect(state.name)}: pass it to calls on its own pool"
          )
        )

      not match?(%{os_pid: ^os_pid, status: :ready}, state.workers[index]) ->
        refuse(state, tag, lost(state.name, index, os_pid))

      index in state.free ->
        Pool.start_job(%{state | free: List.delete(state.free, index)}, index, Pool.watch(job))

      true ->
        job = Pool.watch(job)
        queue = Map.get(state.pinned, index, :queue.new())

        %{
          state
          | pinned: Map.put(state.pinned, index, :queue.in(tag, queue)),
            queued: state.queued + 1,
            jobs: Map.put(state.jobs, tag, job),
            callers: Map.put(state.callers, job.mon, tag)
        }
    end
  end

  @doc "The next job waiting for worker `index` (`{job, state}`), or nil."
  def next(state, index) do
    case state.pinned do
      %{^index => queue} ->
        case :queue.out(queue) do
          {:empty, _} ->
            nil

          {{:value, tag}, rest} ->
            state = %{state | pinned: Map.put(state.pinned, index, rest)}

            case state.jobs do
              %{^tag => %{index: nil} = job} -> {job, %{state | queued: state.queued - 1}}
              # Cancelled while it waited.
              _ -> next(state, index)
            end
        end

      _ ->
        nil
    end
  end

  @doc "Worker `index`'s process is being replaced: its waiting pinned jobs fail."
  def fail(state, index) do
    case Map.pop(state.pinned, index) do
      {nil, _} ->
        state

      {queue, pinned} ->
        w = state.workers[index]
        error = lost(state.name, index, w && w.os_pid)

        Enum.reduce(:queue.to_list(queue), %{state | pinned: pinned}, fn tag, acc ->
          case Map.pop(acc.jobs, tag) do
            {%{index: nil} = job, jobs} ->
              Process.demonitor(job.mon, [:flush])
              Pool.reply(tag, {:error, error})

              %{
                acc
                | jobs: jobs,
                  callers: Map.delete(acc.callers, job.mon),
                  queued: acc.queued - 1,
                  failed: acc.failed + 1
              }

            _ ->
              acc
          end
        end)
    end
  end

  defp refuse(state, tag, error) do
    Pool.reply(tag, {:error, error})
    %{state | failed: state.failed + 1}
  end

  defp lost(pool, index, os_pid) do
    Error.new(
      :worker,
      "the object was lost with its worker: worker #{index} of pool #{inspect(pool)} " <>
        "(OS pid #{os_pid}) is gone (it died or was recycled)",
      details: %{pool: pool, worker: index, os_pid: os_pid}
    )
  end
end
