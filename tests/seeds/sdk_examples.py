# mypy: ignore-errors
"""The code of the custom-connection SDK seed (custom-connection-sdk.de.md), imports changed only.

Each class below is the document's, in its order and its formatting (ruff
skips this file): the interface sketch, the TCP socket connection with its
health check (two snippets of one class), and the Modbus TCP, serial (RS485)
and REST examples. The only lines that differ from the document are the
imports at the top. What the document uses without showing
(``send_data``/``receive_data``) and what pymodbus 3 changed are added after
them, marked as such; docs/seeds/sdk.md lists why.
"""

import socket
import time
from typing import Any, Dict

from edgelink import BaseConnection, ConnectionStatus

# --- "BaseConnection Interface" ----------------------------------------------


class MyConnection(BaseConnection):
    def connect(self) -> bool:
        """Stellt Verbindung her"""
        pass

    def disconnect(self) -> bool:
        """Trennt Verbindung"""
        pass

    def is_connected(self) -> bool:
        """Prüft Verbindungsstatus"""
        pass

    def health_check(self) -> bool:
        """Health-Check für Auto-Reconnect"""
        pass


# --- "1. TCP-Socket Connection" and "2. Health-Check" ---------------------------


class CustomTCPConnection(BaseConnection):
    def __init__(self, connection_id: str, config: Dict, app_context: Any):
        super().__init__(connection_id, config, app_context)

        self.host = config.get('host', 'localhost')
        self.port = config.get('port', 5000)
        self.socket = None

    def connect(self) -> bool:
        try:
            self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.socket.connect((self.host, self.port))

            self.status = ConnectionStatus.CONNECTED
            self.connected_at = time.time()

            return True
        except Exception as e:
            self.status = ConnectionStatus.ERROR
            self.last_error = str(e)
            return False

    def health_check(self) -> bool:
        """Sendet PING, erwartet PONG"""
        if not self.is_connected():
            return False

        try:
            self.socket.send(b"PING\n")
            response = self.socket.recv(1024)

            return b"PONG" in response
        except:
            return False


# --- "Real-World Beispiele": Modbus TCP ------------------------------------------


class ModbusTCPConnection(BaseConnection):
    def __init__(self, connection_id, config, app_context):
        super().__init__(connection_id, config, app_context)
        from pymodbus.client import ModbusTcpClient

        self.client = ModbusTcpClient(
            host=config['host'],
            port=config.get('port', 502)
        )

    def connect(self) -> bool:
        try:
            self.client.connect()
            self.status = ConnectionStatus.CONNECTED
            return True
        except:
            self.status = ConnectionStatus.ERROR
            return False

    def read_holding_registers(self, address, count):
        """Custom Modbus read method"""
        result = self.client.read_holding_registers(address, count)
        self.update_stats(packets_sent=1, packets_received=1)
        return result.registers if result else []


# --- "Serial Port (RS485)" --------------------------------------------------------


class SerialConnection(BaseConnection):
    def __init__(self, connection_id, config, app_context):
        super().__init__(connection_id, config, app_context)
        import serial

        self.port = config['port']  # "COM3" or "/dev/ttyUSB0"
        self.baudrate = config.get('baudrate', 9600)
        self.serial = None

    def connect(self) -> bool:
        try:
            import serial
            self.serial = serial.Serial(
                port=self.port,
                baudrate=self.baudrate,
                timeout=1
            )
            self.status = ConnectionStatus.CONNECTED
            return True
        except:
            self.status = ConnectionStatus.ERROR
            return False


# --- "HTTP REST API" ----------------------------------------------------------------


class RESTAPIConnection(BaseConnection):
    def __init__(self, connection_id, config, app_context):
        super().__init__(connection_id, config, app_context)
        import requests

        self.base_url = config['base_url']
        self.api_key = config.get('api_key')
        self.session = requests.Session()

    def connect(self) -> bool:
        try:
            # Test-Request
            response = self.session.get(f"{self.base_url}/health")
            if response.status_code == 200:
                self.status = ConnectionStatus.CONNECTED
                return True
            return False
        except:
            return False

    def get(self, endpoint):
        """Custom GET method"""
        response = self.session.get(f"{self.base_url}/{endpoint}")
        self.update_stats(packets_sent=1, packets_received=1)
        return response.json()


# --- Not in the document: what its usage section calls without showing -----------


class CustomTCPDevice(CustomTCPConnection):
    """The TCP example plus the ``send_data``/``receive_data`` that "3. Verbindung nutzen" calls."""

    def send_data(self, data: bytes) -> None:
        self.socket.sendall(data)
        self.update_stats(packets_sent=1, bytes_sent=len(data))

    def receive_data(self) -> bytes:
        data = self.socket.recv(1024)
        self.update_stats(packets_received=1, bytes_received=len(data))
        return data


class ModbusTCPConnection3(ModbusTCPConnection):
    """The Modbus example for pymodbus 3, which made ``count`` keyword-only."""

    def read_holding_registers(self, address, count):
        result = self.client.read_holding_registers(address, count=count)
        self.update_stats(packets_sent=1, packets_received=1)
        return result.registers if result else []
