/ qmqtt — MQTT for q/kdb+.
/ A drop-in for KxSystems/mqtt's mqtt.q: the same .mqtt names, defaults and default callbacks, bound to the
/ library mqttkdb ($QHOME/l64/mqttkdb.so, l64arm, l32arm). q code written for KX's library keeps working.
/ Differences from KX (see README): publishing never blocks q (messages are queued for an I/O thread; up to
/ 100 QoS 1/2 messages in flight unless `reliable`/`maxInflightMessages` say otherwise); the connection
/ reconnects by itself (`autoReconnect 0b to turn off); TLS host names are verified unless `verify 0`;
/ payloads may be byte vectors and topics strings; .mqtt.disconn gets the cause as a string; disconnect
/ succeeds on a connection that is down (it stops reconnecting). At exit connections close at once: call
/ .mqtt.disconnect[ms] first to let queued messages go out.

\d .mqtt

/ ---- KX's surface ----
connX:`mqttkdb 2:(`connX;3);
init :`mqttkdb 2:(`init;1);
pubx :`mqttkdb 2:(`pub;4);
subx :`mqttkdb 2:(`sub;2);
unsub:`mqttkdb 2:(`unsub;1);
isConnected:`mqttkdb 2:(`isConnected;1);
disconnect :`mqttkdb 2:(`disconnect;1);

pub:.mqtt.pubx[;;1;0];
sub:.mqtt.subx[;1];
conn:{[tcpconn;pname;opt]connX[tcpconn;pname](enlist[`]!enlist(::)),opt};

/ Default callbacks (overwrite them). msgrcvd[topic;msg]: strings (msg a byte vector with `rcvPayload`byte);
/ msgsent[token]: long, QoS 1/2 only, when the broker acknowledged; disconn[cause]: string.
msgsent:{0N!(`msgsent;x);};
disconn:{0N!(`disconn;x);};
msgrcvd:{0N!(`msgrecvd;x;y);};

/ ---- additions ----
/ conn options beyond KX's (KX's keys all work: username password keepAliveInterval cleansession reliable
/ connectTimeout MQTTVersion cleanstart maxInflightMessages lastWill* trustStore keyStore privateKey CApath
/ enabledCipherSuites enableServerCertAuth sslVersion verify ...; those that cannot be honoured fail conn
/ with an error naming the key, e.g. 'httpProxy unsupported):
/   queueBytes queueMessages   bounds of the publish queue (default 4 MiB, 100000 messages)
/   fullPolicy                 `error (pub signals 'queue full) `dropOldest `dropNewest
/   autoReconnect              1b (default) / 0b;  backoffMin backoffMax: ms between attempts (1000 30000)
/   alpn sni                   TLS ALPN protocol(s) (symbol or symbols) and server name
/   rcvPayload                 `char (default) or `byte: type of msg in msgrcvd
/   linger                     ms the I/O thread may collect messages before sending (default 0)
/   maxMessageSize             largest incoming message in bytes (default 1048576); a bigger one is acknowledged,
/                              discarded and counted (stats' droppedTooLarge), the connection stays up
/   batchScheduling            1b (default): the I/O thread never preempts q's main thread
/   logLevel                   as .mqtt.loglevel (process-wide)
/   spoolDir                   store-and-forward: a directory for this connection's disk spool (off unless
/                              given). When the broker is unreachable and the queue fills, the oldest queued
/                              messages go to disk and are sent, in order, once it is back - also after q restarts.
/   spoolBytes spoolFull       disk budget (default 64 MiB); `dropOldest (default) or `refuse when it is full
/   spoolSync drainRate        `never / `batch / ms between fsyncs (default 1000); backlog messages/s (default: all)
/ Several connections: connh returns a handle h (long >= 1); handle 0 means the default (conn) connection.
/   h:.mqtt.connh[`$"ssl://broker:8883";`gw1;`trustStore`keyStore`privateKey!(`ca.pem;`gw.pem;`gw.key)]
/   .mqtt.pubh[h;`t;"msg"]  .mqtt.pubxh[h;`t;"msg";qos;retain]  .mqtt.subh[h;`t]  .mqtt.subxh[h;`t;qos]
/   .mqtt.unsubh[h;`t]  .mqtt.isConnectedh h  .mqtt.disconnecth[h;timeoutMs]  .mqtt.statsh h
/ Callbacks of handle connections get the handle first; the defaults hand over to the KX-shaped ones.
connhx:`mqttkdb 2:(`connh;3);
connh:{[tcpconn;pname;opt]connhx[tcpconn;pname](enlist[`]!enlist(::)),opt};
pubxh:`mqttkdb 2:(`pubh;5);
pubh:.mqtt.pubxh[;;;1;0];
subxh:`mqttkdb 2:(`subh;3);
subh:.mqtt.subxh[;;1];
unsubh:`mqttkdb 2:(`unsubh;2);
isConnectedh:`mqttkdb 2:(`isConnectedh;1);
disconnecth:`mqttkdb 2:(`disconnecth;2);
msgrcvdh:{[h;topic;msg].mqtt.msgrcvd[topic;msg]};
msgsenth:{[h;token].mqtt.msgsent token};
disconnh:{[h;cause].mqtt.disconn cause};
/ subrefused[topic]: the broker refused a subscription made while the link was down (sub signals 'sub refused
/ when connected); counted in stats' subRefused.
subrefused:{-2"mqtt: the broker refused the subscription to ",x;};
subrefusedh:{[h;topic].mqtt.subrefused topic};

/ Batch publish: one call queues many messages (far cheaper per message than pub in a loop).
/ topic: a symbol/string for all, or a list with one topic per message; msgs: a list of strings or byte
/ vectors. Returns the tokens (longs).   .mqtt.pubbatch[`sensors/t;("21.5";"21.6");1;0b]
pubbatch :`mqttkdb 2:(`pubbatch;4);
pubbatchh:`mqttkdb 2:(`pubbatchh;5);

/ Counters: queued queuedBytes inflight sent acked dropped droppedOldest droppedNewest refusedFull
/ droppedIncoming rxPaused received reconnects bytesIn bytesOut callbackErrors wakeups socketWrites spooled spooledBytes
/ spoolOldestAgeMs spilled spoolDropped spoolBytesWritten subRefused droppedTooLarge failed topicAliased
/ topicAliasBytesSaved serverReceiveMaximum serverMaximumPacketSize serverTopicAliasMaximum serverMaximumQos
/ serverKeepAlive (what the broker's CONNACK set, MQTT's defaults where it said nothing: 65535 0N 0 2 0N)
/ assignedClientId connected lastError.
stats :`mqttkdb 2:(`stats;1);
statsh:`mqttkdb 2:(`statsh;1);

/ ---- MQTT 5: conn with `MQTTVersion`cleanstart!(5;1b) (cleanstart, else cleansession, is Clean Start) ----
/ conn options (MQTTVersion 5 only, but maximumPacketSize):
/   sessionExpiryInterval      seconds the broker keeps the session after the connection ends (0; -1: never)
/   receiveMaximum             QoS 1/2 messages the broker may have unacknowledged towards us (65535)
/   maximumPacketSize          largest packet we accept (1048576); the broker is told, and keeps to it
/   topicAliases               topic aliases we use for repeated topics, up to the broker's maximum (16; 0: off)
/   topicAliasMaximum          topic aliases the broker may use towards us (0)
/   userProperties             CONNECT's user properties: a dictionary of strings  `site`unit!("gw1";"C")
/   rcvProperties              1b: received messages go to msgrcvdp[topic;msg;props] instead of msgrcvd
/ props: a dictionary, any of messageExpiry (seconds) contentType payloadFormat (0 bytes, 1 UTF-8)
/ responseTopic correlationData (string or bytes) userProperties (a dictionary of strings); received ones
/ may also hold subscriptionIds. Returns the token(s), as pub and pubbatch.
/   .mqtt.pubp[`sensors/t;"21.5";1;0b;`messageExpiry`userProperties!(60;enlist[`unit]!enlist"C")]
pubp      :`mqttkdb 2:(`pubp;5);
pubph     :`mqttkdb 2:(`pubph;6);
pubbatchp :`mqttkdb 2:(`pubbatchp;5);
pubbatchph:`mqttkdb 2:(`pubbatchph;6);
/ msgrcvdp[topic;msg;props] (with rcvProperties 1b; the default hands over to msgrcvd).
/ msgfail[token;reason]: the message will not be delivered - the broker refused it (PUBACK/PUBREC reason code
/ >= 0x80) or it breaks the broker's limits (Maximum Packet Size, Maximum QoS, Retain Available); reason is
/ a string: the reason code's name and value, then the broker's words, e.g. "Quota exceeded (0x97): ...".
/ It is not sent again, and no msgsent comes for it.
msgrcvdp :{[topic;msg;props].mqtt.msgrcvd[topic;msg]};
msgfail  :{0N!(`msgfail;x;y);};
msgrcvdph:{[h;topic;msg;props].mqtt.msgrcvdp[topic;msg;props]};
msgfailh :{[h;token;reason].mqtt.msgfail[token;reason]};

/ Log level of the library (stderr): `off`error`warn`info`debug`trace (or 0-5); (::) reads it.
loglevel:`mqttkdb 2:(`loglevel;1);
\d .

.mqtt.init[];
