"""ModbusBridge: the one owner of the pymodbus TCP client.

Every failure (refused connect, timeout, exception response, broken socket) becomes
`ModbusError`, so callers handle one type. The link state is logged once when failing starts
and once on recovery, not on every cycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from vpp_edge.logfmt import kv
from vpp_edge.metrics import EdgeMetrics

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125

_Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


class ModbusError(Exception):
    """Any failure talking to the device."""


class ModbusBridge:
    """Serialised reads/writes over one TCP connection, reconnecting lazily on the next request."""

    def __init__(
        self,
        host: str,
        port: int,
        unit_id: int,
        metrics: EdgeMetrics,
        *,
        timeout_s: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._failing = False
        self.last_rtt_s = 0.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_client()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"modbus-{self.host}:{self.port}",
        )
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=self.timeout_s * 2)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise ModbusError(f"connect to {self.host}:{self.port} failed: {exc!r}") from exc
        if not ok:
            client.close()
            raise ModbusError(f"connect to {self.host}:{self.port} refused or timed out")
        self._client = client
        return client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _mark(self, ok: bool, op: str, error: str = "") -> None:
        if ok and self._failing:
            self._failing = False
            log.info("modbus_link_recovered", extra=kv(host=self.host, port=self.port))
        elif not ok:
            self.metrics.modbus_errors.labels(op=op).inc()
            if not self._failing:
                self._failing = True
                log.warning("modbus_link_failing", extra=kv(host=self.host, port=self.port, op=op, error=error))

    async def _execute(self, op: str, address: int, request: _Request) -> ModbusPDU:
        async with self._lock:
            started = time.perf_counter()
            try:
                client = await self._ensure_connected()
                response = await asyncio.wait_for(request(client), timeout=self.timeout_s * 1.5)
                if response is None or response.isError():
                    raise ModbusError(f"{op} at {address}: device answered {response!r}")
            except ModbusError as exc:
                self._mark(False, op, str(exc))
                if not self.connected:
                    self._drop_client()
                raise
            except (TimeoutError, OSError, ModbusException) as exc:
                # The socket may now carry a late answer: start clean next time.
                self._drop_client()
                self._mark(False, op, repr(exc))
                raise ModbusError(f"{op} at {address} failed: {exc!r}") from exc
            rtt_s = time.perf_counter() - started
            self.last_rtt_s = rtt_s
            self.metrics.modbus_rtt_seconds.labels(op=op).observe(rtt_s)
            self._mark(True, op)
            return response

    async def read_holding(self, address: int, count: int) -> list[int]:
        """Read `count` holding registers starting at the 0-based `address`."""
        if not 0 < count <= MAX_READ_REGISTERS:
            raise ModbusError(f"read count {count} outside 1..{MAX_READ_REGISTERS}")

        async def request(client: AsyncModbusTcpClient) -> ModbusPDU:
            return await client.read_holding_registers(address, count=count, device_id=self.unit_id)

        response = await self._execute("read", address, request)
        registers = list(response.registers)
        if len(registers) != count:
            raise ModbusError(f"read at {address}: asked {count} registers, got {len(registers)}")
        return registers

    async def write_registers(self, address: int, values: Sequence[int]) -> float:
        """Write holding registers; returns the round trip in seconds."""
        regs = [int(v) & 0xFFFF for v in values]

        async def request(client: AsyncModbusTcpClient) -> ModbusPDU:
            if len(regs) == 1:
                return await client.write_register(address, regs[0], device_id=self.unit_id)
            return await client.write_registers(address, regs, device_id=self.unit_id)

        await self._execute("write", address, request)
        return self.last_rtt_s

    async def close(self) -> None:
        """Close the link; waits for a request in flight only up to the timeout."""
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout=self.timeout_s)
        except TimeoutError:
            self._drop_client()
            return
        try:
            self._drop_client()
        finally:
            self._lock.release()
