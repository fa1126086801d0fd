"""The LRU of lru_hash maps, modelled on kernel/bpf/bpf_lru_list.c step by step.

The kernel's LRU is not a strict least-recently-used order. Nodes (the map's preallocated elements) sit on
an active, an inactive or a free list, and carry a `ref` bit that lookups from programs set. Taking a free
node may rotate the lists (ref'd nodes go back to the active head, the rest drift to inactive) and shrink
the inactive tail into free nodes, evicting their elements; with a common LRU (the default) every CPU also
keeps a local free list, refilled `target_free` nodes at a time, and a pending list of the nodes it handed
out since its last refill, and steals from other CPUs when everything is taken. With BPF_F_NO_COMMON_LRU
each CPU has its own lists and its own share of the nodes.

Without contention that machinery is deterministic, and this module replays it: the same operations on
the same CPUs evict the same keys as the kernel (test_vm_maps_kernel.py checks it, hopping between CPUs).
Where it cannot follow: when CPUs race, the kernel gives up on a lock it cannot take (rqspinlock timeout,
NMI) by failing the allocation or deferring a free (`pending_free`); one Python thread never contends, so
neither happens here, and an interpreter running "CPUs" one after another sees the uncontended kernel.

Linked lists are ported literally (head insertion, tail scans, a rotation cursor that points into the
inactive list), since the order of scans decides which element goes.
"""

from __future__ import annotations

from collections.abc import Callable

ACTIVE, INACTIVE, FREE, LOCAL_FREE, LOCAL_PENDING = range(5)
_COUNTED = (ACTIVE, INACTIVE)  # the kernel counts only these lists (NR_BPF_LRU_LIST_COUNT)
LOCAL_FREE_TARGET = 128  # refill size cap, and scan budget, of a common LRU
PERCPU_FREE_TARGET = 4  # ... of a per-CPU LRU


class Link:
    """A list_head: a list is a sentinel Link; a node is a Link in one list at a time."""

    __slots__ = ("next", "prev")

    def __init__(self) -> None:
        self.prev = self.next = self

    def empty(self) -> bool:
        return self.next is self


def _add(node: Link, head: Link) -> None:  # list_add: right after head
    node.prev, node.next = head, head.next
    head.next.prev = node
    head.next = node


def _del(node: Link) -> None:
    node.prev.next = node.next
    node.next.prev = node.prev
    node.prev = node.next = node


def _move(node: Link, head: Link) -> None:  # list_move
    _del(node)
    _add(node, head)


def _reversed(head: Link):
    """list_for_each_entry_safe_reverse: tail to head, tolerating the current node moving away."""
    node = head.prev
    while node is not head:
        prev = node.prev
        yield node
        node = prev


class Node(Link):
    """An LRU node: a map element (the hash map subclasses it with key and value)."""

    __slots__ = ("cpu", "ref", "type")

    def __init__(self) -> None:
        super().__init__()
        self.type = FREE
        self.ref = False
        self.cpu = 0


class LruList:
    """struct bpf_lru_list. Nodes never used yet are counted in `fresh` instead of being made up front:
    they are the tail of the free list (populate added them at the head one by one, and every later free
    goes to the head too), so they are only materialized when a scan from the head reaches them."""

    def __init__(self, fresh: int, make: Callable[[], Node], cpu: int = 0):
        self.lists = [Link() for _ in range(3)]
        self.counts = [0, 0]
        self.next_inactive_rotation: Link = self.lists[INACTIVE]
        self.fresh = fresh
        self._make = make
        self._cpu = cpu

    def free_empty(self) -> bool:
        return self.lists[FREE].empty() and not self.fresh

    def first_free(self) -> Node:
        head = self.lists[FREE]
        if head.empty():
            self._materialize()
        return head.next  # type: ignore[return-value]

    def free_nodes(self):
        """The free list from its head, materializing fresh nodes as the walk reaches them."""
        head = self.lists[FREE]
        yield from list(_forward(head))
        while self.fresh:
            yield self._materialize()

    def _materialize(self) -> Node:
        self.fresh -= 1
        node = self._make()
        node.type, node.cpu = FREE, self._cpu
        head = self.lists[FREE]
        node.prev, node.next = head.prev, head  # the tail of the free list
        head.prev.next = node
        head.prev = node
        return node

    def move(self, node: Node, target: int) -> None:
        """__bpf_lru_node_move: between or within active/inactive/free; clears ref."""
        if node.type != target:
            self._count(node.type, -1)
            self._count(target, 1)
            node.type = target
        node.ref = False
        if node is self.next_inactive_rotation:
            self.next_inactive_rotation = node.prev
        _move(node, self.lists[target])

    def move_in(self, node: Node, target: int) -> None:
        """__bpf_lru_node_move_in: from a CPU's pending list onto this list."""
        self._count(target, 1)
        node.type = target
        node.ref = False
        _move(node, self.lists[target])

    def move_to_free(self, node: Node, free_list: Link, free_type: int) -> None:
        """__bpf_lru_node_move_to_free: onto a free list (this one's or a CPU's), keeping ref."""
        if node is self.next_inactive_rotation:
            self.next_inactive_rotation = node.prev
        self._count(node.type, -1)
        node.type = free_type
        _move(node, free_list)

    def _count(self, kind: int, delta: int) -> None:
        if kind in _COUNTED:
            self.counts[kind] += delta


def _forward(head: Link):
    node = head.next
    while node is not head:
        nxt = node.next
        yield node
        node = nxt


class LocalList:
    """struct bpf_lru_locallist: a CPU's free nodes (a LIFO, the kernel's llist) and its pending list."""

    def __init__(self, cpu: int):
        self.free: list[Node] = []
        self.pending = Link()
        self.next_steal = cpu


class Lru:
    """struct bpf_lru over `nr_elems` nodes. `delete_from_htab(node)` unlinks a node's element from the hash
    table and says whether it was there (htab_lru_map_delete_node)."""

    def __init__(self, nr_elems: int, num_cpus: int, percpu: bool, make: Callable[[], Node],
                 delete_from_htab: Callable[[Node], bool]):
        self.percpu = percpu
        self.num_cpus = num_cpus
        self._delete = delete_from_htab
        if percpu:
            # bpf_percpu_lru_populate: consecutive nodes per CPU (nr_elems is a multiple of num_cpus).
            share = nr_elems // num_cpus
            self.cpu_lists = [LruList(share, make, cpu) for cpu in range(num_cpus)]
            self.nr_scans = PERCPU_FREE_TARGET
        else:
            self.common = LruList(nr_elems, make)
            self.local = [LocalList(cpu) for cpu in range(num_cpus)]
            self.nr_scans = LOCAL_FREE_TARGET
            self.target_free = min(max(nr_elems // num_cpus // 2, 1), LOCAL_FREE_TARGET)

    # ---- taking and giving back nodes ---------------------------------------------------------------------

    def pop_free(self, cpu: int) -> Node | None:
        return self._percpu_pop_free(cpu) if self.percpu else self._common_pop_free(cpu)

    def push_free(self, node: Node) -> None:
        if self.percpu:
            self.cpu_lists[node.cpu].move(node, FREE)
            return
        if node.type == LOCAL_PENDING:  # still on the pending list of the CPU that took it: back to its free
            _del(node)
            node.type = LOCAL_FREE
            node.ref = False
            self.local[node.cpu].free.append(node)
            return
        self.common.move(node, FREE)

    @staticmethod
    def set_ref(node: Node) -> None:
        node.ref = True

    # ---- the common LRU -------------------------------------------------------------------------------------

    def _common_pop_free(self, cpu: int) -> Node | None:
        loc = self.local[cpu]
        if not loc.free:
            self._pop_free_to_local(loc)
        if loc.free:
            node = loc.free.pop()
            self._add_pending(loc, cpu, node)
            return node
        # Nothing free here or globally: steal a free or pending node from the CPUs in turn.
        first = steal = loc.next_steal
        node = None
        while True:
            victim = self.local[steal]
            node = victim.free.pop() if victim.free else self._pop_pending(victim)
            steal = (steal + 1) % self.num_cpus
            if node is not None or steal == first:
                break
        loc.next_steal = steal
        if node is None:
            return None
        self._add_pending(loc, cpu, node)
        return node

    def _add_pending(self, loc: LocalList, cpu: int, node: Node) -> None:
        node.cpu = cpu
        node.type = LOCAL_PENDING
        node.ref = False
        _add(node, loc.pending)

    def _pop_pending(self, loc: LocalList) -> Node | None:
        # The oldest pending node not referenced, else (second pass) the oldest one at all.
        for force in (False, True):
            for node in _reversed(loc.pending):
                if (force or not node.ref) and self._delete(node):
                    _del(node)
                    return node
        return None

    def _pop_free_to_local(self, loc: LocalList) -> None:
        lru = self.common
        for node in _reversed(loc.pending):  # __local_list_flush
            lru.move_in(node, ACTIVE if node.ref else INACTIVE)
        self._rotate(lru)
        harvest = Link()
        taken = 0
        for node in lru.free_nodes():
            lru.move_to_free(node, harvest, LOCAL_FREE)
            taken += 1
            if taken == self.target_free:
                break
        if taken < self.target_free:
            self._shrink(lru, self.target_free - taken, harvest, LOCAL_FREE)
        for node in list(_forward(harvest)):
            _del(node)
            loc.free.append(node)

    # ---- the per-CPU LRU ------------------------------------------------------------------------------------

    def _percpu_pop_free(self, cpu: int) -> Node | None:
        lru = self.cpu_lists[cpu]
        self._rotate(lru)
        if lru.free_empty():
            self._shrink(lru, PERCPU_FREE_TARGET, lru.lists[FREE], FREE)
        if lru.free_empty():
            return None
        node = lru.first_free()
        node.ref = False
        lru.move(node, INACTIVE)
        return node

    # ---- rotation and shrinking -----------------------------------------------------------------------------

    def _rotate(self, lru: LruList) -> None:
        if lru.counts[INACTIVE] < lru.counts[ACTIVE]:
            self._rotate_active(lru)
        self._rotate_inactive(lru)

    def _rotate_active(self, lru: LruList) -> None:
        # From the tail: ref'd nodes go back to the active head (ref cleared), the others to inactive.
        active = lru.lists[ACTIVE]
        first = active.next
        scanned = 0
        for node in _reversed(active):
            lru.move(node, ACTIVE if node.ref else INACTIVE)
            scanned += 1
            if scanned == self.nr_scans or node is first:
                break

    def _rotate_inactive(self, lru: LruList) -> None:
        # From the rotation cursor towards the head, ref'd nodes go to active; the cursor resumes there.
        inactive = lru.lists[INACTIVE]
        if inactive.empty():
            return
        last = lru.next_inactive_rotation.next
        if last is inactive:
            last = last.next
        cur = lru.next_inactive_rotation
        nxt: Link = inactive
        scanned = 0
        while scanned < self.nr_scans:
            if cur is inactive:
                cur = cur.prev
                continue
            nxt = cur.prev
            if cur.ref:  # type: ignore[attr-defined]
                lru.move(cur, ACTIVE)  # type: ignore[arg-type]
            if cur is last:
                break
            cur = nxt
            scanned += 1
        lru.next_inactive_rotation = nxt

    def _shrink(self, lru: LruList, want: int, free_list: Link, free_type: int) -> int:
        got = self._shrink_inactive(lru, want, free_list, free_type)
        if got:
            return got
        # Nothing unreferenced: evict the tail of inactive (or of active), ref bit or not.
        inactive = lru.lists[INACTIVE]
        victims = inactive if not inactive.empty() else lru.lists[ACTIVE]
        for node in _reversed(victims):
            if self._delete(node):
                lru.move_to_free(node, free_list, free_type)
                return 1
        return 0

    def _shrink_inactive(self, lru: LruList, want: int, free_list: Link, free_type: int) -> int:
        got = scanned = 0
        for node in _reversed(lru.lists[INACTIVE]):
            if node.ref:
                lru.move(node, ACTIVE)
            elif self._delete(node):
                lru.move_to_free(node, free_list, free_type)
                got += 1
                if got == want:
                    break
            scanned += 1
            if scanned == self.nr_scans:
                break
        return got
