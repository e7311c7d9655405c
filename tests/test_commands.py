"""The supervisor's event queue: an event put from any thread is taken by the loop without
waiting for some other event, however the puts interleave with the loop's wake-ups (the
pipe is written only when the loop may be asleep)."""
import select
import threading

from worker.parent.commands import Commands


def test_no_command_waits_for_an_unrelated_event_under_racing_puts():
    commands = Commands()
    ran = []
    stalls = []
    producers_done = threading.Event()

    def loop():
        commands.loop_ident = threading.get_ident()
        while True:
            while (event := commands.pop()) is not None:
                ran.append(event)
            if producers_done.is_set() and not commands:
                return
            # Only the wake-up pipe can end this wait: a command left queued with nothing
            # to wake the loop is a stall.
            ready, _, _ = select.select([commands.wake_fd], [], [], 2.0)
            if not ready:
                if commands:
                    stalls.append(len(ran))
                    return
                continue
            commands.woken()

    def produce(k):
        for i in range(20000):
            commands.put((k, i))

    looper = threading.Thread(target=loop)
    looper.start()
    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    producers_done.set()
    commands.put("last")                     # wakes the loop if it sleeps with nothing left
    looper.join(30)
    assert not stalls, f"an event waited with nothing to wake the loop (after {stalls[0]})"
    assert len(ran) == 80001 and ran[-1] == "last"
    assert sorted(ran[:-1]) == [(k, i) for k in range(4) for i in range(20000)]
    assert commands.close() == []


def test_a_put_from_the_loops_own_thread_writes_no_wake_up():
    commands = Commands()
    commands.loop_ident = threading.get_ident()
    assert commands.put("a")
    assert not select.select([commands.wake_fd], [], [], 0)[0]
    commands.loop_ident = None
    assert commands.put("b") and commands.put("c")
    assert select.select([commands.wake_fd], [], [], 0)[0]         # one byte for both
    commands.woken()
    assert not select.select([commands.wake_fd], [], [], 0)[0]
    assert commands.close() == ["a", "b", "c"]
    assert not commands.put("d")                                     # closed: refused
