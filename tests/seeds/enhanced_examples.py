# mypy: ignore-errors
"""The code of the enhanced connection manager seed (enhanced-connection-manager.md), imports changed only.

Each example is the document's, in its order (ruff skips this file). The
document's snippets use names they do not define (``conn_mgr``, ``watts``,
``ui``, ``read_power_from_hardware``, ``send_alert``,
``restart_connection_service``): each snippet is the body of a function that
takes them, a line that is not the document's (marked). Its definitions
(the states, the events, the constants) are here as the document writes them,
prefixed ``DOC_``, for the test to hold edgelink's against.
"""

from enum import Enum

from edgelink.compat.enhanced import ConnectionManager, LogEvent

# --- "1. Thread-Safe State Machine" ------------------------------------------------------


class DOC_ConnectionState(Enum):  # the document's ConnectionState, renamed
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    TX_DROPPED = "tx_dropped"


# --- "2. Exponential Backoff with MAX_RETRIES" -------------------------------------------

# Configuration constants
DOC_MAX_RETRIES = 10
DOC_INITIAL_BACKOFF_MS = 100
DOC_MAX_BACKOFF_MS = 10000


# --- "5. Structured Log Events" ----------------------------------------------------------


class DOC_LogEvent:  # the document's LogEvent, renamed
    RECONNECT_START = "EVENT_RECONNECT_START"
    RECONNECT_OK = "EVENT_RECONNECT_OK"
    RECONNECT_FAILED = "EVENT_RECONNECT_FAILED"
    POWER_WARNING = "EVENT_POWER_WARNING"
    POWER_CRITICAL = "EVENT_POWER_CRITICAL"
    TX_DROP_DETECTED = "EVENT_TX_DROP_DETECTED"
    FAST_PATH_ACTIVE = "EVENT_FAST_PATH_ACTIVE"
    STATE_CHANGE = "EVENT_STATE_CHANGE"
    CONNECTION_STABLE = "EVENT_CONNECTION_STABLE"
    MAX_RETRIES_EXCEEDED = "EVENT_MAX_RETRIES_EXCEEDED"


# --- "Basic Usage" -----------------------------------------------------------------------


def basic_usage():  # not the document's
    # Create connection manager
    conn_mgr = ConnectionManager()

    # Start monitoring
    conn_mgr.start_monitoring()
    conn_mgr.start_power_polling()

    # Update data activity
    conn_mgr.update_last_data_time()

    # Get status
    status = conn_mgr.get_connection_status()
    return conn_mgr, status  # not the document's: the test looks at them


# --- "3. Priority Fast-Path for TX Drops" and "Handling TX Drops" ------------------------


def tx_drop(conn_mgr):  # not the document's
    # Detect TX drop and trigger fast reconnection
    conn_mgr.mark_tx_drop()
    conn_mgr.safe_reconnect(fast_path=True)


def handling_tx_drops(conn_mgr):  # not the document's
    # When TX drop is detected
    conn_mgr.mark_tx_drop()

    # System automatically triggers fast-path reconnection
    # Manual trigger if needed:
    conn_mgr.safe_reconnect(fast_path=True)


# --- "Power Monitoring" --------------------------------------------------------------------


def power_monitoring(conn_mgr, watts):  # not the document's
    # Update power reading
    warning = conn_mgr.power_monitor.update_power(watts)

    if warning == LogEvent.POWER_CRITICAL:
        # Handle critical power condition
        pass
    return warning  # not the document's: the test looks at it


# --- "Graceful Shutdown" -------------------------------------------------------------------


def graceful_shutdown(conn_mgr):  # not the document's
    # Stop all monitoring threads
    conn_mgr.stop_monitoring()


# --- "Main Application" ---------------------------------------------------------------------


def main_application(ui):  # not the document's
    # In main.py
    conn_manager = ConnectionManager()
    conn_manager.start_monitoring()
    conn_manager.start_power_polling()

    # Monitor in UI thread
    status = conn_manager.get_connection_status()
    ui.update_status(status)
    return conn_manager  # not the document's: the test stops it


# --- "CAT Emulator" ---------------------------------------------------------------------------


def cat_emulator(conn_manager):  # not the document's
    # In cat_emulator.py
    conn_manager.update_last_data_time()  # On data received
    conn_manager.mark_tx_drop()          # On TX drop detection


# --- "Power Interface" ------------------------------------------------------------------------


def power_interface(read_power_from_hardware):  # not the document's
    class HardwareConnectionManager(ConnectionManager):  # not the document's: the method's class
        # Replace simulated power reading
        def _power_polling_loop(self):
            while not self.shutdown_event.is_set():
                actual_power = read_power_from_hardware()  # Replace simulation
                warning = self.power_monitor.update_power(actual_power)
                # ... rest of logic
                self.shutdown_event.wait(self.power_poll_interval)  # not the document's: its "rest"

    return HardwareConnectionManager


# --- "Configuration" ---------------------------------------------------------------------------

# Connection timeouts
DOC_CONNECTION_TIMEOUT = 3.0        # Seconds before connection timeout
DOC_FAST_PATH_TIMEOUT = 0.5         # Fast-path timeout

# Power monitoring
DOC_POWER_POLL_INTERVAL = 1.0       # Power polling interval
DOC_ZERO_POWER_THRESHOLD = 0.1      # Watts threshold for zero power


# --- "Event Monitoring" --------------------------------------------------------------------------


def event_monitoring(send_alert, restart_connection_service):  # not the document's
    # Custom event handler
    def handle_connection_event(event_type, event_data):
        if event_type == LogEvent.POWER_CRITICAL:
            # Alert operators
            send_alert(f"Power critical: {event_data['power_watts']}W")
        elif event_type == LogEvent.MAX_RETRIES_EXCEEDED:
            # Restart service
            restart_connection_service()

    return handle_connection_event  # not the document's: the test registers it
